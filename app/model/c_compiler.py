"""The C compiler that ``torch.compile`` needs on the GPU, without one in the launcher image.

Triton builds a small CPython extension (its CUDA helper module) with ``$CC``, else ``gcc``, else
``clang``. The launcher image carries no compiler (gcc and libc headers were 60 MB of every pull):
the runtime brings one from PyPI instead, the ``ziglang`` wheel (clang with its own libc headers and
link stubs), and :func:`provide` points Triton at it through ``CC``. ``CC`` must name one executable
with no arguments, so a three-line wrapper is written next to the interpreter (or in the temp folder
when that is read-only). A system compiler, when present, is used as Triton would find it; a bare
``cc`` (which Triton does not look for) is named in ``CC``.

The wrapper pins a baseline target so zig's output and cache do not depend on the host's CPU, and
gives zig a writable cache when ``HOME`` is not. zig's first build in a container fills that cache
(seconds): it is done in the background when the wrapper is chosen, while the model loads.
Inductor's CPU kernels need OpenMP, which zig does not ship: on the CPU a system C++ compiler is still
needed (the CPU serves eager by default).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

WRAPPER_NAME = "zig-cc"
# glibc 2.28 (manylinux_2_28, as torch's wheels) and a baseline CPU: one build for every host.
TARGETS = {"x86_64": ("x86_64-linux-gnu.2.28", "x86_64"), "aarch64": ("aarch64-linux-gnu.2.28", "generic")}

WRAPPER = """#!/bin/sh
# Written by app/model/c_compiler.py: the C compiler Triton runs ($CC), zig from the runtime's ziglang wheel.
# zig needs a writable cache: ZIG_GLOBAL_CACHE_DIR, else XDG_CACHE_HOME, else HOME, else the temp folder.
if [ -z "${{ZIG_GLOBAL_CACHE_DIR:-}}" ] && [ -z "${{XDG_CACHE_HOME:-}}" ] \\
    && ! {{ [ -n "${{HOME:-}}" ] && [ -w "$HOME" ]; }}; then
  ZIG_GLOBAL_CACHE_DIR=${{TMPDIR:-/tmp}}/zig-cache; export ZIG_GLOBAL_CACHE_DIR
fi
exec {python} -m ziglang cc -target {target} -mcpu={cpu} -Wno-macro-redefined "$@"
"""


def system_compiler() -> str | None:
    """The compiler Triton finds by itself: ``$CC``, else gcc, else clang."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return shutil.which("gcc") or shutil.which("clang")


def zig_available() -> bool:
    return platform.machine() in TARGETS and importlib.util.find_spec("ziglang") is not None


def zig_wrapper() -> str | None:
    """The wrapper around the runtime's zig, written (under a temporary name, then renamed) if missing."""
    if not zig_available():
        return None
    target, cpu = TARGETS[platform.machine()]
    script = WRAPPER.format(python=shlex.quote(sys.executable), target=target, cpu=cpu)
    for folder in (Path(sys.prefix) / "bin", Path(tempfile.gettempdir()) / "catvton-volume"):
        path = folder / WRAPPER_NAME
        try:
            if not (path.is_file() and path.read_text() == script and os.access(path, os.X_OK)):
                folder.mkdir(parents=True, exist_ok=True)
                temporary = folder / f".{WRAPPER_NAME}.{os.getpid()}"
                temporary.write_text(script)
                temporary.chmod(0o755)
                os.replace(temporary, path)
            return str(path)
        except OSError:
            continue
    return None


def provide(warm: bool = True) -> str | None:
    """The C compiler Triton will use, after naming it in ``CC`` where Triton would not find it alone;
    None when there is none (then torch.compile cannot run on the GPU). With ``warm``, zig's cache is
    filled in the background (see :func:`warm_up`)."""
    found = system_compiler()
    if found or os.environ.get("CC"):
        return found
    found = shutil.which("cc")
    if found is None:
        found = zig_wrapper()
        if found and warm:
            warm_up(found)
    if found:
        os.environ["CC"] = found
    return found


_warming: threading.Thread | None = None


def warm_up(cc: str) -> threading.Thread:
    """zig's first build in a fresh container fills its cache (libc stubs, compiler runtime): seconds
    (7-10 s on 2 busy cores, against 0.3-0.7 s after). Done once per process in a background thread,
    while the model loads, so Triton's first build does not wait for it."""
    global _warming
    if _warming is None:
        def build() -> None:
            with tempfile.TemporaryDirectory(prefix="zig-warm-") as folder:
                source = Path(folder) / "warm.c"
                source.write_text("int warm(void) { return 0; }\n")
                done = subprocess.run([cc, str(source), "-O3", "-shared", "-fPIC", "-o", str(Path(folder) / "warm.so")],
                                      capture_output=True, text=True)
                if done.returncode:
                    log.warning("the runtime's C compiler (%s) failed a test build: %s", cc,
                                done.stderr.strip()[-500:])

        _warming = threading.Thread(target=build, name="zig-warm-up", daemon=True)
        _warming.start()
    return _warming


def describe() -> str | None:
    """For the doctor: which compiler Triton would get, or None; changes nothing."""
    if os.environ.get("CC"):
        found = shutil.which(os.environ["CC"])
        return f"CC={os.environ['CC']}" if found else None
    found = shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")
    if found:
        return found
    return "zig from the runtime's ziglang package" if zig_available() else None
