"""Triton's own C build with the compiler app.model.c_compiler provides: the check that the runtime's zig
builds what torch.compile needs on the GPU, runnable without a GPU.

Usage, in a venv with triton and ziglang (triton installs without a GPU), from the repository root:
    env -i HOME=$HOME PATH=/nonexistent PYTHONPATH=. VENV/bin/python bench/triton_cc.py [--cuda-utils]

1. names the compiler as the app does (``c_compiler.provide``: no gcc, clang or cc on PATH, so zig);
2. builds and imports a CPython extension through ``triton.runtime.build.compile_module_from_src``, the
   function Triton's CUDA driver builds its helper module with;
3. with --cuda-utils, builds Triton's real ``cuda_utils`` module (``CudaUtils()``) as on a GPU host, linked
   against a stub ``libcuda.so.1`` made with the same compiler (on a GPU host the driver's is used).
Prints each build's command time; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.model import c_compiler  # noqa: E402

EXTENSION = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a + b);
}
static PyMethodDef methods[] = {{"add", add, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tryon_cc_probe", NULL, -1, methods};
PyMODINIT_FUNC PyInit_tryon_cc_probe(void) { return PyModule_Create(&module); }
"""


def stub_libcuda(cc: str, folder: Path) -> Path:
    """A libcuda.so.1 defining every cu* function Triton's driver.c names, each failing with
    CUDA_ERROR_NO_DEVICE (100), so the module links and loads on a machine without a GPU."""
    import subprocess

    import triton

    driver_c = Path(triton.__file__).parent / "backends" / "nvidia" / "driver.c"
    names = sorted(set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(", driver_c.read_text())))
    source = folder / "stub_cuda.c"
    source.write_text("".join(f"int {name}(void) {{ return 100; }}\n" for name in names))
    library = folder / "libcuda.so.1"
    subprocess.run([cc, str(source), "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library)], check=True)
    (folder / "libcuda.so").symlink_to("libcuda.so.1")
    # Loaded now, so the built module's dependency on libcuda.so.1 is met by soname (a GPU host's loader
    # finds the driver's own in its library path).
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    print(f"stub libcuda.so.1: {len(names)} functions from {driver_c.name}")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda-utils", action="store_true", help="also build Triton's cuda_utils module")
    args = parser.parse_args()
    cc = c_compiler.provide(warm=False)
    if cc is None:
        print("no C compiler: neither a system one nor the ziglang package", file=sys.stderr)
        return 1
    print(f"CC={os.environ.get('CC', cc)}")
    from triton.runtime.build import compile_module_from_src

    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-cache-"))
    started = time.perf_counter()
    module = compile_module_from_src(EXTENSION, "tryon_cc_probe")
    assert module.add(2, 3) == 5
    print(f"compile_module_from_src: built and imported in {time.perf_counter() - started:.2f} s; add(2, 3) = 5")
    if args.cuda_utils:
        if "TRITON_LIBCUDA_PATH" not in os.environ:
            os.environ["TRITON_LIBCUDA_PATH"] = str(stub_libcuda(cc, Path(tempfile.mkdtemp(prefix="stub-cuda-"))))
        from triton.backends.nvidia.driver import CudaUtils

        started = time.perf_counter()
        utils = CudaUtils()
        names = [name for name in ("load_binary", "get_device_properties", "launch") if hasattr(utils, name)]
        print(f"CudaUtils: Triton's cuda_utils built and loaded in {time.perf_counter() - started:.2f} s ({names})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
