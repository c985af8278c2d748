"""Every setting of the app in one table, read from ``TRYON_*`` environment variables.

The fields of :class:`Settings` *are* the table: each carries its help text and limits in its
metadata, and the environment variable is ``TRYON_`` + the upper-cased field name. The CLI, the
README table and the tests all read this one definition.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "TRYON_"
VOLUME_CANDIDATES = (Path("/runpod-volume"), Path("/workspace"))
LOCAL_VOLUME = Path("volume")

# CatVTON publishes one attention checkpoint per training set, each in its own folder of the repo.
ADAPTER_FOLDERS = {
    "mix": "mix-48k-1024",
    "vitonhd": "vitonhd-16k-512",
    "dresscode": "dresscode-16k-512",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(ValueError):
    """A setting has a value the app cannot use; the message names the variable and the fix."""


def _setting(default, help, *, choices=(), minimum=None, maximum=None, multiple_of=None, secret=False):
    meta = {"help": help, "choices": tuple(choices), "minimum": minimum, "maximum": maximum,
            "multiple_of": multiple_of, "secret": secret}
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    volume: Path | None = _setting(
        None, "Volume root. Unset: /runpod-volume, else /workspace, else ./volume.")
    tiny_models: bool = _setting(
        False, "Use tiny random-weight models in $TRYON_VOLUME/tiny-models (made on first use): offline demos "
        "and smoke tests; results are noise.")
    base_repo: str = _setting(
        "stable-diffusion-v1-5/stable-diffusion-inpainting", "Hub repo of the SD-1.5 inpainting UNet and scheduler.")
    vae_repo: str = _setting("stabilityai/sd-vae-ft-mse", "Hub repo of the VAE.")
    adapter_repo: str = _setting("zhengchong/CatVTON", "Hub repo of the CatVTON attention weights.")
    parser_repo: str = _setting("mattmdjaga/segformer_b2_clothes",
                                "Hub repo of the human-parsing SegFormer for auto masks (optional download).")
    auto_download: str = _setting("auto", "Fetch missing weights on first load: 1, 0, or auto (on only for the "
                                  "local ./volume).", choices=("auto", "1", "0"))
    adapter_version: str = _setting(
        "mix", "CatVTON checkpoint: mix (mix-48k-1024), vitonhd or dresscode (16k-512).",
        choices=tuple(ADAPTER_FOLDERS))
    device: str = _setting("auto", "Compute device; auto picks CUDA when visible, else CPU.",
                           choices=("auto", "cuda", "cpu"))
    dtype: str = _setting("auto", "Compute dtype; auto is bf16 on GPUs that support it, else fp16; fp32 on CPU.",
                          choices=("auto", "bf16", "fp16", "fp32"))
    steps: int = _setting(50, "Default denoising steps.", minimum=1, maximum=100)
    guidance: float = _setting(2.5, "Default classifier-free guidance scale (<= 1 turns guidance off).",
                               minimum=0.0, maximum=20.0)
    seed: int = _setting(42, "Default seed; -1 picks a random one per run.", minimum=-1, maximum=2**63 - 1)
    width: int = _setting(768, "Default output width in pixels.", minimum=64, maximum=2048, multiple_of=8)
    height: int = _setting(1024, "Default output height in pixels.", minimum=64, maximum=2048, multiple_of=8)
    preload: bool = _setting(False, "Load the model in the background at start instead of on first use.")
    idle_release_s: float = _setting(
        0.0, "Free the model (and GPU memory) after this many idle seconds; 0 keeps it loaded.", minimum=0.0)
    compile: str = _setting(
        "auto", "torch.compile the UNet: auto (on CUDA with Triton, off on the CPU), on, or off. Compiled graphs "
        "are cached on the volume; until a worker's first compile ends it serves eager.", choices=("auto", "on", "off"))
    compile_mode: str = _setting(
        "default", "torch.compile mode; max-autotune-no-cudagraphs benchmarks kernels (a longer first compile).",
        choices=("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"))
    compile_tuning: bool = _setting(
        False, "Compile with Inductor's tuning for convolution-heavy GPU graphs (1x1 convolutions as matmuls, "
        "coordinate-descent kernel tuning): a longer first compile; bench/gpu.py measures whether it pays.")
    fuse_qkv: bool = _setting(True, "Fuse each self-attention's query, key and value projections into one matmul.")
    channels_last: bool = _setting(True, "Hold the UNet and VAE in channels_last memory format (faster convolutions "
                                   "on GPUs).")
    warmup: str = _setting(
        "auto", "Run a short try-on at the default size after loading, before reporting ready, so the first request "
        "is as fast as the rest: auto (on GPUs: on a CPU it costs a slow try-on and selects no kernels), on, or off.",
        choices=("auto", "on", "off"))
    runtime_key: str = _setting(
        "", "The runtime's key, set by the launcher; names the compile cache folder $TRYON_VOLUME/cache/torch/<key>. "
        "Unset: derived from the Python, torch and Triton versions.")
    draft_steps: int = _setting(
        20, "Steps of a draft try-on (the labelled fast option): at most this many, guided on the first half only.",
        minimum=2, maximum=100)
    mask_blur: float = _setting(9.0, "Default Gaussian blur radius applied to masks before the try-on.",
                                minimum=0.0, maximum=50.0)
    queue_max: int = _setting(32, "Try-ons that may wait for the GPU (studio, Gradio API), and REST requests in "
                              "progress (from arrival to answer), all callers together; past it only a caller with "
                              "nothing there gets in (up to twice this), others get 429 with Retry-After.",
                              minimum=1, maximum=1000)
    max_waiting_per_owner: int = _setting(
        12, "Try-ons of one owner (a login or API key; visitors and anonymous calls by address) that may wait or run "
        "at once, a batch counted by its try-ons; more get 429 with Retry-After, other owners are not affected. The "
        "GPU serves owners in turn.", minimum=1, maximum=1000)
    quota: str = _setting(
        "", "Try-ons per owner per clock period (UTC), counted across the workers of the volume: one rule for everyone "
        "(30/h) or per kind (visitor=10/h,user=50/h,key=500/d; a kind left out has none; units m, h, d, e.g. 15m). "
        "Visitors and anonymous calls count by address. Empty or off: no quota. Over it: 429 with Retry-After.")
    login_limit: str = _setting(
        "10/15m", "Failed sign-ins allowed per account and per address in a period (N/m, N/h, N/d), counted across "
        "workers; more, even with the right password, are refused (429 with Retry-After) until the period has "
        "passed. off: no limit.")
    trust_proxy: int = _setting(
        0, "Proxies of yours in front of the app (0: none). With N, a caller's address is the N-th X-Forwarded-For "
        "entry from the right (the one your outermost proxy appended), not the connection's: visitors' and "
        "anonymous callers' fair share, limits, quotas and sign-in limits are counted by it.", minimum=0,
        maximum=10)
    safety: bool = _setting(
        False, "Run Stable Diffusion's safety checker on every result (weights: download --with-safety); a flagged "
        "result is not saved as an image. Recommended with --share.")
    batch_max: int = _setting(12, "Most try-ons in one batch (persons x garments x seeds); a larger batch is refused "
                              "(400) before any work.", minimum=1, maximum=100)
    save_inputs: bool = _setting(False, "Also keep the person, garment and mask images next to each result.")
    max_upload_mb: float = _setting(20.0, "Largest accepted upload or base64 image, in MB.", minimum=1.0)
    max_run_s: float = _setting(600.0, "A REST try-on still running this many seconds after its request arrived is "
                                "stopped between steps and answered 504; 0 for no limit.", minimum=0.0)
    max_body_mb: float = _setting(30.0, "Largest REST request body, in MB, refused (413) before it is read; send "
                                  "bigger images or batches as paths under inputs/.", minimum=1.0)
    host: str = _setting("127.0.0.1", "Address the server listens on (the port comes from PORT); the container's "
                         "launcher passes 0.0.0.0.")
    auth: str = _setting(
        "", "Logins as user:password, comma-separated, or @FILE with one per line. When set, every route but /ping "
        "needs a login (browser), HTTP Basic or an API key.", secret=True)
    api_keys: str = _setting(
        "", "API keys as name:key, comma-separated, or @FILE; sent as X-API-Key. The name owns the results (name a "
        "key after a user to share that user's gallery).", secret=True)
    gallery: str = _setting("own", "own: each owner sees only their own results; all: everyone let in sees every "
                            "result (a team studio).", choices=("own", "all"))
    input_dirs: str = _setting("inputs", "Volume folders that REST requests may read images from, comma-separated.")
    log_level: str = _setting("info", "Log level.", choices=("debug", "info", "warning", "error"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); non-None overrides win."""
        environ = os.environ if environ is None else environ
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            override = overrides.get(f.name)
            if override is not None:
                raw, source = override, f"--{f.name.replace('_', '-')}"
            elif env_name(f.name) in environ:
                raw, source = environ[env_name(f.name)], env_name(f.name)
            else:
                continue
            values[f.name] = _parse(f, hints[f.name], raw, source)
        values["volume"] = resolve_volume(values.get("volume"))
        return cls(**values)

    @property
    def layout(self) -> VolumeLayout:
        return VolumeLayout(self.volume or resolve_volume(None))

    @property
    def models_dir(self) -> Path:
        return self.layout.tiny_models if self.tiny_models else self.layout.models

    @property
    def downloads_allowed(self) -> bool:
        if self.auto_download == "auto":
            return (self.volume or resolve_volume(None)) == LOCAL_VOLUME.resolve() and not self.tiny_models
        return self.auto_download == "1" and not self.tiny_models

    @property
    def input_folders(self) -> list[str]:
        """TRYON_INPUT_DIRS as volume-relative folder names (checked: no absolute paths, no "..")."""
        folders = []
        for item in self.input_dirs.split(","):
            folder = item.strip().strip("/")
            if not folder:
                continue
            if item.strip().startswith("/") or ".." in Path(folder).parts or "\\" in folder:
                raise SettingError(f"TRYON_INPUT_DIRS: {item.strip()!r} must be a folder inside the volume, "
                                   "relative and without '..' (e.g. inputs).")
            folders.append(folder)
        return folders

    @property
    def adapter_folder(self) -> str:
        return ADAPTER_FOLDERS[self.adapter_version]


@dataclass(frozen=True)
class VolumeLayout:
    """Where things live on the volume (DESIGN §1)."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def tiny_models(self) -> Path:
        return self.root / "tiny-models"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def examples(self) -> Path:
        return self.root / "examples"

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def app(self) -> Path:
        return self.root / "app"


# Read by launcher/entrypoint.sh (bash) before Python exists; declared here so the README table,
# the doctor and the tests know them too.
LAUNCHER_SETTINGS = (
    ("TRYON_ENV_MODE", "archive", "archive, volume",
     "archive: the runtime is unpacked from an archive on the volume to local disk; volume: a venv used in "
     "place at $TRYON_VOLUME/venvs/<key> (slower imports; for comparison)."),
    ("TRYON_PYTHON", "3.11", "version or path",
     "A version for a uv-managed Python packed into the runtime (kept in $TRYON_VOLUME/python-downloads for "
     "offline builds), or a path to an existing interpreter."),
    ("TRYON_TORCH_BACKEND", "auto", "auto, cpu, cu126, cu128, cu130, none",
     "torch's build: auto maps the host's NVIDIA driver onto cu126 (>= 525), cu128 (>= 570) or cu130 (>= 580), "
     "else cpu; none passes no --torch-backend to uv. Part of the runtime key."),
    ("TRYON_REQUIREMENTS", "launcher/requirements.txt", "path", "Pinned runtime dependencies (just lock)."),
    ("TRYON_LOCAL_DIR", "/opt/tryon", "path",
     "Local disk for the unpacked runtime, the app copy and uv's cache (~/.cache/catvton-volume when /opt "
     "is not writable)."),
    ("TRYON_LOCK_STALE_S", "120", "1..",
     "A build lock whose heartbeat has not moved for this long (by the waiter's monotonic clock) is taken over; "
     "a builder beats every few seconds while it works."),
    ("TRYON_BUILD_WAIT_S", "3600", "0..", "How long a worker waits for another worker's build before giving up."),
    ("TRYON_ENV_KEEP", "2", "1..",
     "A builder removes other keys' runtimes beyond this many newest keys (never one used within the hour)."),
    ("TRYON_ARCHIVE_PARTS", "16", "1..",
     "Parts a runtime's files are packed into (plus one for its folders); workers unpack them in parallel, "
     "one per core."),
    ("TRYON_FAILPOINTS", "", "PHASE=pause:S or PHASE=kill, ...",
     "For tests only: freeze (no heartbeat) or kill the launcher at a phase: locked, venv-built, installed, "
     "packing, packed, archive-published, manifest-published, unpacking."),
)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def resolve_volume(explicit: Path | str | None) -> Path:
    """The volume root: explicit value, else the RunPod mounts, else ./volume (absolute)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    for candidate in VOLUME_CANDIDATES:
        if candidate.is_dir():
            return candidate
    return LOCAL_VOLUME.resolve()


def settings_table(launcher: bool = False) -> list[dict]:
    """Rows of (env var, type, default, allowed, help) for docs and the CLI; the launcher's too if asked."""
    hints = typing.get_type_hints(Settings)
    rows = []
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        allowed = ", ".join(meta["choices"])
        if hints[f.name] is bool:
            allowed = "1/0, true/false, yes/no, on/off"
        elif not allowed and (meta["minimum"] is not None or meta["maximum"] is not None):
            lo = "" if meta["minimum"] is None else meta["minimum"]
            hi = "" if meta["maximum"] is None or meta["maximum"] >= 2**31 else meta["maximum"]
            allowed = f"{lo}..{hi}"
        if meta["multiple_of"]:
            allowed += f", multiple of {meta['multiple_of']}"
        type_name = getattr(hints[f.name], "__name__", None) or "path"
        default = int(f.default) if isinstance(f.default, bool) else f.default
        rows.append({"env": env_name(f.name), "type": type_name, "default": default,
                     "allowed": allowed, "help": meta["help"], "secret": meta["secret"]})
    if launcher:
        rows += [{"env": env, "type": "str", "default": default, "allowed": allowed, "help": help, "secret": False}
                 for env, default, allowed, help in LAUNCHER_SETTINGS]
    return rows


def _parse(f: dataclasses.Field, hint, raw, source: str):
    meta = f.metadata
    text = str(raw).strip()

    def fail(expected: str):
        return SettingError(f"{source}={raw!r} is not valid: expected {expected}. {meta['help']}")

    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise fail("one of 1, 0, true, false, yes, no, on, off")
    if hint is int or hint is float:
        try:
            value = hint(text)
        except ValueError:
            raise fail("an integer" if hint is int else "a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise fail("a finite number")
        lo, hi = meta["minimum"], meta["maximum"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise fail(f"a value from {lo} to {hi}" if hi is not None else f"a value >= {lo}")
        if meta["multiple_of"] and value % meta["multiple_of"]:
            raise fail(f"a multiple of {meta['multiple_of']}")
        return value
    if hint == Path | None:
        if not text:
            raise fail("a folder path")
        return Path(text)
    if meta["choices"]:
        if text.lower() not in meta["choices"]:
            raise fail("one of " + ", ".join(meta["choices"]))
        return text.lower()
    if not text and not meta["secret"] and f.default != "":  # where empty is the default, it may be said
        raise fail("a non-empty value")
    return text


def port_from_env(name: str, default: int | None) -> int | None:
    """A port from the environment (PORT, PORT_HEALTH), checked; ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingError(f"{name}={raw!r} is not valid: expected a port number from 1 to 65535.")
    return int(raw)
