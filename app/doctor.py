"""python -m app doctor: a checklist of the volume, weights, runtime, app code, GPU and ports.

Each line says ok, warn or FAIL and, when not ok, what to do. Exit status 1 on any FAIL. Imports no
torch: the weights are checked by size and by reading the safetensors headers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

from app.config import Settings
from app.model import c_compiler
from app.model.weights import MANIFEST, ModelFile, required_files, safety_files

MIN_FREE_GB = 5.0
ADAPTER_KEY = re.compile(r"^(\d+)\.(to_q\.weight|to_k\.weight|to_v\.weight|to_out\.0\.weight|to_out\.0\.bias)$")


class Report:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.failures = 0

    def ok(self, what: str) -> None:
        print(f"  ok    {what}", file=self.out)

    def warn(self, what: str, fix: str) -> None:
        print(f"  warn  {what} -> {fix}", file=self.out)

    def fail(self, what: str, fix: str) -> None:
        self.failures += 1
        print(f"  FAIL  {what} -> {fix}", file=self.out)


def run_checks(settings: Settings, out=sys.stdout) -> int:
    report = Report(out)
    root = settings.layout.root
    print(f"catvton-volume doctor: volume {root}", file=out)
    if check_volume(report, root):
        check_weights(report, settings)
        check_runtime(report, root)
        check_app_source(report, root)
        check_compile_cache(report, settings)
    check_gpu(report)
    check_port(report, settings)
    verdict = "all checks passed" if not report.failures else f"{report.failures} check(s) failed"
    print(verdict, file=out)
    return 1 if report.failures else 0


def check_volume(report: Report, root: Path) -> bool:
    if not root.is_dir():
        report.fail(f"volume {root} does not exist", "attach the network volume (RunPod: /runpod-volume on "
                    "serverless, /workspace on pods) or set TRYON_VOLUME")
        return False
    mount = "a mount point" if os.path.ismount(root) else "a folder (not a mount point)"
    report.ok(f"volume {root} exists, {mount}")
    probe = root / f".doctor-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
        report.ok("volume is writable")
    except OSError as exc:
        report.fail(f"volume is not writable ({exc.strerror})", "mount it read-write or fix its permissions")
    for folder in ("models", "outputs"):
        path = root / folder
        if path.exists() and not os.access(path, os.W_OK):
            report.fail(f"{path} is not writable", f"fix the permissions of {path}")
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < MIN_FREE_GB:
        report.warn(f"{free_gb:.1f} GB free on the volume", f"keep at least {MIN_FREE_GB:g} GB free for the runtime "
                    "archive and results")
    else:
        report.ok(f"{free_gb:.1f} GB free on the volume")
    return True


def check_weights(report: Report, settings: Settings) -> None:
    models = settings.models_dir
    sizes = _manifest_sizes(models)
    for item in required_files(settings):
        check_weight_file(report, models, sizes, item, "python -m app download")
    check_safety(report, settings, sizes)
    adapter = models / settings.adapter_repo / settings.adapter_folder / "attention" / "model.safetensors"
    if adapter.is_file() and not _safetensors_problem(adapter):
        keys = _safetensors_header(adapter).keys() - {"__metadata__"}
        bad = [k for k in keys if not ADAPTER_KEY.match(k)]
        indices = sorted({int(ADAPTER_KEY.match(k)[1]) for k in keys if ADAPTER_KEY.match(k)})
        if bad or not indices or indices != list(range(0, 8 * len(indices), 8)) or len(keys) != 5 * len(indices):
            report.fail(f"adapter keys do not follow CatVTON's layout ({len(keys)} keys, e.g. {sorted(keys)[:2]})",
                        "use zhengchong/CatVTON's attention/model.safetensors")
        else:
            report.ok(f"adapter keys valid ({len(keys)} tensors for {len(indices)} attention layers)")


def check_weight_file(report: Report, models: Path, sizes: dict[str, int], item: ModelFile, fetch: str) -> None:
    """One model file: present, of the manifest's size, a readable safetensors or JSON file."""
    path = _weight_path(models, item)
    label = f"{item.repo}/{item.path}"
    if path is None:
        report.fail(f"missing {label}", f"run: {fetch} (or just setup-volume-download"
                    f"{fetch.removeprefix('python -m app download')})")
        return
    size = path.stat().st_size
    expected = sizes.get(label)
    if expected is not None and size != expected:
        report.fail(f"{label} is {size:,} bytes, the manifest says {expected:,} (truncated or damaged)",
                    f"delete it and run {fetch}")
        return
    if path.suffix == ".safetensors":
        problem = _safetensors_problem(path)
        if problem:
            report.fail(f"{label}: {problem}", f"delete it and run {fetch}")
            return
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except ValueError:
            report.fail(f"{label} is not valid JSON", f"delete it and run {fetch}")
            return
    report.ok(f"{label} ({size:,} bytes)")


def check_safety(report: Report, settings: Settings, sizes: dict[str, int]) -> None:
    """Stable Diffusion's safety checker: whether TRYON_SAFETY is on, and its files when it is or they are there."""
    items = safety_files(settings)
    present = [item for item in items if _weight_path(settings.models_dir, item) is not None]
    fetch = "python -m app download --with-safety"
    if settings.safety:
        report.ok("safety checker on (TRYON_SAFETY): every result is checked; flagged ones are not saved")
        for item in items:
            check_weight_file(report, settings.models_dir, sizes, item, fetch)
    elif len(present) == len(items):
        report.ok("safety checker off (TRYON_SAFETY); its files are on the volume: set TRYON_SAFETY=on for a "
                  "public link")
    else:
        report.ok(f"safety checker off (TRYON_SAFETY) and not on the volume; for a public link (--share) run "
                  f"{fetch} and set TRYON_SAFETY=on")


def _manifest(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """A runtime manifest's fields and its parts ({file: size})."""
    fields, parts = {}, {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name == "part" and len(value.split()) == 3:
            parts[value.split()[0]] = int(value.split()[1])
        elif name:
            fields[name] = value
    return fields, parts


def check_runtime(report: Report, root: Path) -> None:
    """Published runtimes (launcher/lib/store.sh): envs/<key>/manifest naming a build's parts."""
    envs = root / "envs"
    keys = sorted(p for p in envs.iterdir() if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)) \
        if envs.is_dir() else []
    if not any((key / "manifest").is_file() for key in keys):
        report.warn("no runtime published on the volume yet", "the first worker start builds it (launcher), or run "
                    "just build-runtime from any Linux x86_64 machine with the volume attached")
    for key in keys:
        if (key / "manifest").is_file():
            fields, parts = _manifest(key / "manifest")
            wrong = [name for name, size in parts.items()
                     if not (key / name).is_file() or (key / name).stat().st_size != size]
            build = fields.get("build", "?")
            if wrong or not parts:
                report.fail(f"runtime {key.name}: build {build} is damaged ({', '.join(wrong) or 'no parts'})",
                            "the next worker start moves it aside as .bad and rebuilds it")
            else:
                report.ok(f"runtime {key.name}: build {build} ({sum(parts.values()) / 2**20:.0f} MiB in {len(parts)} "
                          f"parts, {fields.get('input.backend', '?')}, built {fields.get('created', '?')} on "
                          f"{fields.get('host', '?')})")
        bad = sorted(key.glob("*.manifest.bad"))
        if bad:
            report.warn(f"runtime {key.name}: {len(bad)} damaged build(s) kept aside as .bad",
                        f"inspect or delete {key}/*.bad; repeated damage points at the volume's health")
        if (key / ".lock").is_dir():
            owner = (key / ".lock" / "owner").read_text().replace("\n", " ").strip() \
                if (key / ".lock" / "owner").is_file() else "no owner yet"
            report.warn(f"runtime {key.name}: build lock held ({owner})",
                        "a worker is building now; if none is, the next worker takes it over once its heartbeat "
                        "has been still for TRYON_LOCK_STALE_S")
    legacy = sorted(envs.glob("*.tar.zst")) if envs.is_dir() else []
    if legacy:
        report.warn(f"{len(legacy)} runtime archive(s) in the old single-file layout",
                    "unused now; the next build removes them once an hour old")


def check_app_source(report: Report, root: Path) -> None:
    if (root / "app" / "__main__.py").is_file():
        report.ok(f"app code from the volume ({root / 'app'}): updates need no new image")
    else:
        report.ok("app code from the image (no app/ on the volume)")


def check_compile_cache(report: Report, settings: Settings) -> None:
    """Whether workers will start compiled: the volume's compile cache, and the C compiler Triton needs."""
    if settings.compile == "off":
        report.ok("torch.compile is off (TRYON_COMPILE=off): workers serve eager")
        return
    compiler = c_compiler.describe()
    if compiler is None:
        report.warn("no C compiler for Triton: torch.compile cannot run on the GPU, workers serve eager",
                    "run the doctor with the runtime's Python (it brings the ziglang package), or set CC")
    else:
        report.ok(f"C compiler for Triton: {compiler}")
    base = settings.layout.cache / "torch"
    keys = [settings.runtime_key] if settings.runtime_key else \
        sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    files = [f for key in keys for f in sorted((base / key).glob("*.bin"))]
    if files:
        shown = ", ".join(f"{f.parent.name}/{f.name} ({f.stat().st_size / 1e6:.0f} MB)" for f in files[:4])
        report.ok(f"compile cache: {len(files)} file(s) in {base}: {shown}{' ...' if len(files) > 4 else ''}")
    else:
        report.warn(f"no compiled graphs in {base}{' for runtime ' + keys[0] if settings.runtime_key else ''} yet",
                    "the first GPU worker compiles (about a minute per shape, serving eager meanwhile); "
                    "just warm-cache on a GPU machine fills it ahead")


def check_gpu(report: Report) -> None:
    if not shutil.which("nvidia-smi"):
        report.warn("no NVIDIA driver visible (nvidia-smi missing)", "on a GPU worker, check the container's GPU "
                    "access; on a CPU machine try-ons take minutes")
        return
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.free,memory.total",
                           "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    if done.returncode:
        report.fail(f"nvidia-smi failed: {done.stderr.strip() or done.stdout.strip()}",
                    "check the host driver and the container's GPU access")
        return
    for line in done.stdout.strip().splitlines():
        report.ok(f"GPU {line.strip()}")


def check_port(report: Report, settings: Settings) -> None:
    port = int(os.environ.get("PORT") or 7860)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, port))
            report.ok(f"port {port} is free on {settings.host}")
        except OSError:
            report.warn(f"port {port} is in use on {settings.host}", "the server may already be running; set PORT "
                        "to use another")


def _weight_path(models: Path, item: ModelFile) -> Path | None:
    path = item.local(models)
    if path.is_file():
        return path
    if item.path.endswith("diffusion_pytorch_model.fp16.safetensors"):
        full = path.with_name("diffusion_pytorch_model.safetensors")
        return full if full.is_file() else None
    return None


def _manifest_sizes(models: Path) -> dict[str, int]:
    try:
        manifest = json.loads((models / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return {f"{e['repo']}/{e['path']}": e["size"] for e in manifest.get("files", []) if e.get("size") is not None}


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (bad header, data shorter than the header says), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8:
            return "header longer than the file (truncated)"
        header = _safetensors_header(path)
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return "not a readable safetensors file"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size < 8 + length + end:
        return f"truncated: {size:,} bytes, the header needs {8 + length + end:,}"
    return None
