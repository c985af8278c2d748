"""app.model.c_compiler: with no compiler on the machine (as in the launcher image), Triton is pointed at the
runtime's zig, which builds a CPython extension the way Triton builds its CUDA helper module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import ModelLoadError
from app.model import accel, c_compiler

needs_zig = pytest.mark.skipif(not c_compiler.zig_available(), reason="the ziglang wheel is for Linux x86_64/aarch64")

EXTENSION = textwrap.dedent("""
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    #include <math.h>

    static PyObject *hypot_of(PyObject *self, PyObject *args) {
        double a, b;
        if (!PyArg_ParseTuple(args, "dd", &a, &b)) return NULL;
        return PyFloat_FromDouble(sqrt(a * a + b * b));
    }
    static PyMethodDef methods[] = {{"hypot_of", hypot_of, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "probe_ext", NULL, -1, methods};
    PyMODINIT_FUNC PyInit_probe_ext(void) { return PyModule_Create(&module); }
""")


@pytest.fixture(scope="module")
def zig_temp(tmp_path_factory) -> Path:
    """A temp folder whose zig-cache the tests share: zig's first build takes seconds."""
    return tmp_path_factory.mktemp("zig-temp")


@pytest.fixture
def bare_machine(tmp_path, monkeypatch, zig_temp):
    """No gcc, clang or cc on PATH and no CC: what the launcher image now holds."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("CC", "recorded")  # so that the CC provide() sets is undone after the test
    monkeypatch.delenv("CC")
    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(zig_temp / "zig-cache"))
    monkeypatch.setattr(c_compiler, "_warming", None)
    return empty


@needs_zig
@pytest.mark.slow
def test_with_no_compiler_triton_gets_the_runtimes_zig_and_it_builds_an_extension(bare_machine, tmp_path,
                                                                                  zig_temp):
    cc = c_compiler.provide()
    assert cc is not None and Path(cc).name == "zig-cc" and os.environ["CC"] == cc
    # zig's cache is filled in the background, once, while the model would load.
    warming = c_compiler._warming
    assert warming is not None and c_compiler.warm_up(cc) is warming
    warming.join(timeout=300)
    cached = list((zig_temp / "zig-cache").rglob("*"))
    assert not warming.is_alive() and any(path.suffix in (".o", ".so", ".a") for path in cached), cached[:20]
    assert c_compiler.provide() == cc  # idempotent: the same wrapper, CC already set
    # Triton's build (triton/runtime/build.py, 3.x): [CC, src, -O3, -shared, -fPIC, -Wno-psabi, -o, so,
    # -l..., -L..., -I<srcdir>, -I<Python's include dir>], run with no compiler on PATH.
    source = tmp_path / "probe_ext.c"
    source.write_text(EXTENSION)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = tmp_path / f"probe_ext{suffix}"
    include = sysconfig.get_paths(scheme="posix_prefix")["include"]
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(zig_temp / "zig-cache")}
    subprocess.run([cc, str(source), "-O3", "-shared", "-fPIC", "-Wno-psabi", "-o", str(built), "-lm",
                    f"-I{tmp_path}", f"-I{include}"], check=True, env=env, timeout=300)
    spec = importlib.util.spec_from_file_location("probe_ext", built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.hypot_of(3.0, 4.0) == 5.0


@needs_zig
@pytest.mark.slow
def test_the_wrapper_works_without_a_home_and_names_this_interpreter(bare_machine, tmp_path, zig_temp):
    cc = c_compiler.provide()
    script = Path(cc).read_text()
    assert sys.executable in script and "-target" in script
    source = tmp_path / "plain.c"
    source.write_text("int answer(void) { return 42; }\n")
    env = {"PATH": str(bare_machine), "TMPDIR": str(zig_temp)}  # no HOME: zig's cache goes to the temp folder
    subprocess.run([cc, str(source), "-O2", "-shared", "-fPIC", "-o", str(tmp_path / "plain.so")],
                   check=True, env=env, timeout=300)
    assert (tmp_path / "plain.so").stat().st_size > 0 and (zig_temp / "zig-cache").is_dir()


def test_a_system_compiler_is_left_as_triton_finds_it(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("gcc", "cc"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("CC", "recorded")
    monkeypatch.delenv("CC")
    assert c_compiler.provide() == str(tools / "gcc") and "CC" not in os.environ
    # A bare cc, which Triton does not look for, is named for it.
    (tools / "gcc").unlink()
    monkeypatch.setattr(c_compiler, "zig_available", lambda: False)
    assert c_compiler.provide() == str(tools / "cc") and os.environ["CC"] == str(tools / "cc")


def test_with_no_compiler_at_all_the_gpu_serves_eager_and_says_why(bare_machine, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(c_compiler, "zig_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "triton" else None)
    assert accel.compile_blocker("cuda").startswith("no C compiler for Triton")
    settings = Settings.from_env({"TRYON_COMPILE": "auto"}, volume=str(tmp_path))
    with caplog.at_level("WARNING"):
        assert accel.plan(settings, "cuda").compile is False
    assert "torch.compile is off: no C compiler for Triton" in caplog.text
    with pytest.raises(ModelLoadError, match="TRYON_COMPILE=on, but no C compiler"):
        accel.plan(Settings.from_env({"TRYON_COMPILE": "on"}, volume=str(tmp_path)), "cuda")
    monkeypatch.setenv("CC", "/no/such/cc")
    assert "CC=/no/such/cc is not an executable compiler" in accel.compile_blocker("cuda")
