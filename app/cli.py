"""Command line: ``python -m app serve | demo | generate | warm | download | doctor | tiny-models | settings``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from PIL import Image

from app.config import SettingError, Settings, port_from_env, settings_table

EXIT_USAGE, EXIT_MISSING = 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**_overrides(args))
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args, settings)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="CatVTON virtual try-on on a volume.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="one try-on of the built-in example (falls back to tiny models "
                                            "when the real weights are missing)")
    _model_options(demo)
    _generation_options(demo)
    demo.add_argument("--out", type=Path, help="where to write the result (default: <volume>/outputs/demo.png)")
    demo.set_defaults(run=run_demo)

    generate = commands.add_parser("generate", help="one try-on from image files")
    generate.add_argument("--person", type=Path, required=True, help="photo of the person")
    generate.add_argument("--garment", type=Path, required=True, help="photo of the garment")
    generate.add_argument("--mask", type=Path, required=True,
                          help="mask image, white where the garment goes, same size as the person photo")
    generate.add_argument("--out", type=Path, required=True, help="where to write the result (.png, .jpg, .webp)")
    _model_options(generate)
    _generation_options(generate)
    generate.set_defaults(run=run_generate)

    serve = commands.add_parser("serve", help="the try-on studio, REST API and /ping on one port")
    serve.add_argument("--host", help="listen address (TRYON_HOST, default 127.0.0.1: this machine only; 0.0.0.0 "
                       "for every interface)")
    serve.add_argument("--port", type=int, help="port (PORT, default 7860); PORT_HEALTH adds a /ping-only port")
    serve.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    serve.add_argument("--auth", metavar="USER:PASS[,...]|@FILE",
                       help="require a login for every route but /ping (TRYON_AUTH)")
    serve.add_argument("--gallery", choices=("own", "all"),
                       help="own: each owner sees their own results; all: everyone sees all (TRYON_GALLERY)")
    serve.add_argument("--preload", dest="preload", action="store_const", const=True,
                       help="load the model at start (TRYON_PRELOAD=1)")
    serve.add_argument("--tiny-if-missing", action="store_true",
                       help="when the real weights are missing, say so and serve the tiny models instead")
    _model_options(serve)
    serve.set_defaults(run=run_serve)

    warm = commands.add_parser("warm", help="fill the volume's compile cache (torch.compile of the UNet at the "
                               "default size) off the serving path, so workers start compiled")
    _model_options(warm)
    warm.add_argument("--width", help="output width the cache is made for (TRYON_WIDTH)")
    warm.add_argument("--height", help="output height the cache is made for (TRYON_HEIGHT)")
    warm.add_argument("--guidance", help="guidance of the usual request; <= 1 compiles the unguided shape only "
                      "(TRYON_GUIDANCE)")
    warm.set_defaults(run=run_warm)

    fetch = commands.add_parser("download", help="fetch only the model files the pipeline needs (about 2.2 GB)")
    fetch.add_argument("--to", dest="volume", help="volume root to fill (default TRYON_VOLUME); files go to "
                                                    "<volume>/models/<org>/<repo>/")
    fetch.add_argument("--adapter", dest="adapter_version", help="mix, vitonhd or dresscode")
    fetch.add_argument("--with-parser", action="store_true", help="also the human parser for auto masks")
    fetch.add_argument("--with-safety", action="store_true", help="also Stable Diffusion's safety checker "
                       "(TRYON_SAFETY; fetched anyway when that is on)")
    fetch.set_defaults(run=run_download)

    doctor = commands.add_parser("doctor", help="check the volume, weights, runtime, GPU and ports")
    doctor.add_argument("--volume", help="volume root (TRYON_VOLUME)")
    doctor.set_defaults(run=run_doctor)

    tiny = commands.add_parser("tiny-models", help="write a tiny random-weight model set in the volume layout")
    tiny.add_argument("dir", type=Path, help="volume root to write into (models go to DIR/models/...)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(run=run_tiny_models)

    table = commands.add_parser("settings", help="print every setting with its variable, default and value")
    table.add_argument("--markdown", action="store_true", help="the README table")
    table.add_argument("--launcher", action="store_true", help="with --markdown: the launcher's settings")
    table.set_defaults(run=run_settings)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volume", help="volume root (TRYON_VOLUME)")
    parser.add_argument("--tiny", dest="tiny_models", action="store_const", const=True,
                        help="offline: tiny random-weight models (TRYON_TINY_MODELS=1)")
    parser.add_argument("--device", help="auto, cuda or cpu (TRYON_DEVICE)")
    parser.add_argument("--dtype", help="auto, bf16, fp16 or fp32 (TRYON_DTYPE)")
    parser.add_argument("--adapter-version", help="mix, vitonhd or dresscode (TRYON_ADAPTER_VERSION)")


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", help="denoising steps, 1-100 (TRYON_STEPS)")
    parser.add_argument("--guidance", help="guidance scale, >= 0 (TRYON_GUIDANCE)")
    parser.add_argument("--seed", help="seed, -1 for random (TRYON_SEED)")
    parser.add_argument("--width", help="output width, multiple of 8 (TRYON_WIDTH)")
    parser.add_argument("--height", help="output height, multiple of 8 (TRYON_HEIGHT)")


def _overrides(args: argparse.Namespace) -> dict:
    names = ("volume", "tiny_models", "device", "dtype", "adapter_version", "steps", "guidance", "width", "height",
             "host", "preload", "auth", "gallery")
    overrides = {name: getattr(args, name, None) for name in names}
    if args.command != "tiny-models":
        overrides["seed"] = getattr(args, "seed", None)
    return overrides


# -- commands -------------------------------------------------------------------------------------

def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    person = _open_image(args.person, "person")
    garment = _open_image(args.garment, "garment")
    mask = _open_image(args.mask, "mask")
    _check_output_path(args.out)
    return _generate(settings, person, garment, mask, args.out)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.studio.demo_images import example_garment, example_mask, example_person

    settings = _tiny_fallback(args, settings)
    out = args.out or settings.layout.outputs / "demo.png"
    _check_output_path(out)
    return _generate(settings, example_person(), example_garment(), example_mask(), out)


def _tiny_fallback(args: argparse.Namespace, settings: Settings) -> Settings:
    """Settings for the offline demo when the real weights are missing (said loudly), else unchanged.

    On tiny models the defaults shrink to a small picture and fewer steps unless given explicitly:
    seconds on a CPU rather than minutes.
    """
    from app.model.weights import missing_files, missing_weights_message

    missing = [] if settings.tiny_models else missing_files(settings, with_safety=settings.safety)
    if missing and settings.downloads_allowed:
        from app.model.weights import DownloadError, download

        print(f"model files missing: fetching them into {settings.models_dir} (about 2.2 GB) ...", file=sys.stderr)
        try:
            download(settings, with_safety=settings.safety)
            missing = []
        except DownloadError as exc:
            print(f"download failed: {exc}\n", file=sys.stderr)
    if missing:
        print(missing_weights_message(settings, missing), file=sys.stderr)
        print("\nUsing the offline demo on tiny random-weight models instead: it shows the whole path "
              "working, but the pictures are noise, not try-ons.\n", file=sys.stderr)
    overrides = {**_overrides(args), "tiny_models": settings.tiny_models or bool(missing)}
    if overrides["tiny_models"]:
        explicit = {name for name in ("width", "height", "steps")
                    if overrides.get(name) is not None or f"TRYON_{name.upper()}" in os.environ}
        if not explicit & {"width", "height"}:
            overrides.update(width=384, height=512)
        if "steps" not in explicit:
            overrides["steps"] = 10
    return Settings.from_env(**overrides)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.web.early_ping import hold

    port = args.port or port_from_env("PORT", 7860)
    health_port = port_from_env("PORT_HEALTH", None)
    # /ping answers from now on, through the imports below, on the sockets the server then takes over.
    early = hold(settings.host, [port] + ([health_port] if health_port else []))
    from app.model.engine import Engine

    if args.tiny_if_missing:
        settings = _tiny_fallback(args, settings)
    # With preload, the model's weights are read and torch imported while the web stack imports below.
    engine = Engine(settings)
    engine.start()
    from app.web.server import serve

    serve(settings, settings.host, port, share=args.share, health_port=health_port, engine=engine, early=early)
    return 0


def run_warm(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import ModelLoadError
    from app.model.engine import Engine, resolve_device

    if settings.compile == "off":
        raise CliError("TRYON_COMPILE=off: nothing to compile. Unset it (auto compiles on CUDA) or set it to on.")
    if settings.compile == "auto" and resolve_device(settings.device) != "cuda":
        raise CliError("TRYON_COMPILE=auto compiles only on CUDA, and this machine has no GPU in use: run this on "
                       "the GPU worker, or set TRYON_COMPILE=on to fill the CPU's cache.")
    engine = Engine(dataclasses.replace(settings, warmup="on"), background_compile=False)
    print(f"loading models from {settings.models_dir} and compiling the UNet for {settings.width}x{settings.height} "
          "(about a minute per shape on a GPU with an empty cache) ...", file=sys.stderr)
    try:
        engine.get()
    except ModelLoadError as exc:
        raise CliError(str(exc), EXIT_MISSING) from exc
    status = engine.status()
    compiled, timings = status.compile, status.load_timings
    if compiled.get("state") != "ready":
        raise CliError(f"compile failed: {compiled.get('error')}. The workers serve eager meanwhile; "
                       "TRYON_COMPILE=off skips compiling.", 1)
    origin = "from the volume's cache" if compiled["cache_hit"] else "from scratch"
    print(f"compiled {', '.join(compiled['shapes'])} {origin} in {timings.get('compile', 0):.1f} s; "
          f"warm-up try-on {timings.get('warmup', 0):.1f} s")
    print(f"compile cache: {compiled['cache']}")
    return 0


def run_download(args: argparse.Namespace, settings: Settings) -> int:
    from app.model.weights import DownloadError, download

    print(f"downloading into {settings.layout.models} ...", file=sys.stderr)
    try:
        manifest = download(settings, settings.layout.models, with_parser=args.with_parser,
                            with_safety=args.with_safety or settings.safety)
    except DownloadError as exc:
        raise CliError(str(exc), EXIT_MISSING) from exc
    for entry in manifest["files"]:
        print(f"{entry['size'] or 0:>14,}  {entry['repo']}/{entry['path']}")
    print(f"{manifest['total_bytes']:>14,}  bytes in {len(manifest['files'])} files "
          f"({manifest['fetched_bytes']:,} fetched now); manifest: {settings.layout.models / 'manifest.json'}")
    return 0


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from app.doctor import run_checks

    return run_checks(settings)


def run_tiny_models(args: argparse.Namespace, settings: Settings) -> int:
    from app.model.tiny_models import write_tiny_models

    started = time.perf_counter()
    write_tiny_models(args.dir / "models", settings, seed=args.seed)
    print(f"tiny model set written to {args.dir / 'models'} in {time.perf_counter() - started:.1f} s")
    print(f"use it with: TRYON_VOLUME={args.dir} python -m app demo")
    return 0


def run_settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        rows = settings_table(launcher=args.launcher)
        print("| Variable | Default | Allowed | Meaning |")
        print("|---|---|---|---|")
        for row in rows:
            default = "" if row["default"] in (None, "") else f"`{row['default']}`"
            print(f"| `{row['env']}` | {default} | {row['allowed']} | {row['help']} |")
        return 0
    for row in settings_table():
        value = getattr(settings, row["env"].removeprefix("TRYON_").lower())
        if row["secret"] and value:
            value = "(set)"  # never printed
        print(f"{row['env']:<24} {value!s:<52} {row['help']}")
    return 0


# -- helpers --------------------------------------------------------------------------------------

def _generate(settings: Settings, person: Image.Image, garment: Image.Image, mask: Image.Image, out: Path) -> int:
    from app.errors import ModelLoadError, TryOnInputError
    from app.model.engine import Engine

    # One image: a warm-up or a compile would cost more than they save, unless asked for explicitly.
    one_shot = {name: "off" for name in ("warmup", "compile") if f"TRYON_{name.upper()}" not in os.environ}
    engine = Engine(dataclasses.replace(settings, **one_shot))
    print(f"loading models from {settings.models_dir} ...", file=sys.stderr)
    try:
        with engine.use() as pipe:
            status = engine.status()
            print(f"loaded on {status.device} ({status.dtype}) in {status.load_timings['total']:.1f} s",
                  file=sys.stderr)
            seed = None if settings.seed == -1 else settings.seed
            result = pipe(person=person, garment=garment, mask=mask, steps=settings.steps,
                          guidance=settings.guidance, seed=seed, width=settings.width, height=settings.height,
                          callback=_progress)
    except ModelLoadError as exc:
        raise CliError(str(exc), EXIT_MISSING) from exc
    except TryOnInputError as exc:
        raise CliError(str(exc)) from exc
    from app.files import write_atomically

    out.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions()[out.suffix.lower()]
    write_atomically(out, lambda handle: result.image.save(handle, format=image_format))
    timings = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
    print(f"saved {out} ({result.width}x{result.height}, seed {result.seed}, {result.steps} steps, "
          f"guidance {result.guidance})")
    print(f"timings: {timings}")
    return 0


def _progress(step: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\rdenoising {step}/{total}", end="\n" if step == total else "", file=sys.stderr, flush=True)
    elif step == total or step % max(1, total // 5) == 0:
        print(f"denoising {step}/{total}", file=sys.stderr, flush=True)


def _open_image(path: Path, role: str) -> Image.Image:
    """The same intake as the server's: size limits, EXIF orientation, a clear error."""
    from app.errors import TryOnInputError
    from app.images.imaging import decode_image

    try:
        return decode_image(path.read_bytes(), role)
    except FileNotFoundError:
        raise CliError(f"{role} image not found: {path}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise CliError(f"{role} image {path} cannot be read ({exc.strerror}).") from None
    except TryOnInputError as exc:
        raise CliError(f"{role} image {path} could not be read as an image: {exc}") from None


def _check_output_path(out: Path) -> None:
    suffix = out.suffix.lower()
    if suffix not in Image.registered_extensions():
        raise CliError(f"--out {out}: unknown image type {suffix or '(none)'}; end the name in .png, .jpg or .webp.")
