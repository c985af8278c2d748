"""Dockerfile.volume, checked statically (no Docker engine here; hadolint runs in ./dev lint)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile.volume").read_text()


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_image_is_a_launcher_only():
    bases = [line.split()[0] for line in instructions("FROM")]
    assert bases[-1].startswith("debian:") and "slim" in bases[-1]
    assert not any("cuda" in base or "pytorch" in base for base in bases), "no CUDA toolkit: wheels bring theirs"
    assert "pip install" not in DOCKERFILE and "uv pip" not in DOCKERFILE, "Python packages live on the volume"
    assert not re.search(r"safetensors|models/", DOCKERFILE), "weights live on the volume"


def test_image_ships_uv_zstd_the_launcher_and_the_fallback_app():
    assert any("/uv /usr/local/bin/uv" in line for line in instructions("COPY"))
    assert re.search(r"apt-get install .*ca-certificates.*zstd", DOCKERFILE)
    copies = instructions("COPY")
    assert "launcher/ /opt/catvton/launcher/" in copies and "app/ /opt/catvton/app/" in copies
    assert instructions("ENTRYPOINT") == ['["/opt/catvton/launcher/entrypoint.sh"]']
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in DOCKERFILE


def test_entrypoint_finds_the_fallback_app_where_the_image_puts_it():
    # entrypoint.sh looks for the image's app next to its own folder: /opt/catvton/{launcher,app}.
    script = (ROOT / "launcher" / "entrypoint.sh").read_text()
    assert 'IMAGE_APP_DIR=${LAUNCHER_DIR%/*}' in script
    assert (ROOT / "launcher" / "requirements.txt").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "!launcher/" in ignored and "!app/" in ignored


def test_uv_is_pinned_to_the_release_the_tests_run():
    [uv_base] = [line.split()[0] for line in instructions("FROM") if "astral-sh/uv" in line]
    image_version = uv_base.rsplit(":", 1)[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", image_version), "pin uv to one release, not a moving tag"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"uv=={image_version}"' in pyproject, "the tests' uv (pyproject.toml) and the image's must match"


def test_the_health_responder_the_launcher_uses_is_in_the_image():
    health = (ROOT / "launcher" / "lib" / "health.sh").read_text()
    [apt_line] = re.findall(r"apt-get install[^\n]*", DOCKERFILE)
    tools = [tool for tool in ("socat", "busybox") if re.search(rf"\b{tool}\b", health)]
    assert tools and all(tool in apt_line for tool in tools), (tools, apt_line)


def test_the_c_compiler_comes_with_the_runtime_not_the_image():
    # Triton builds a small C extension at run time (app.model.c_compiler points it at the runtime's zig);
    # app.model.accel serves eager without one. gcc and libc headers were 60 MB of every pull.
    [apt_line] = re.findall(r"apt-get install[^\n]*", DOCKERFILE)
    assert not re.search(r"\b(gcc|clang|libc6-dev|build-essential)\b", apt_line), apt_line
    pins = (ROOT / "launcher" / "requirements.txt").read_text()
    assert re.search(r"^ziglang==\d+\.\d+\.\d+ ", pins, flags=re.MULTILINE)
    assert "ziglang" in (ROOT / "pyproject.toml").read_text()
