"""What the launcher tests share: a volume with a tiny wheelhouse and a stand-in app, and ways to run
launcher/entrypoint.sh on it as a worker would.

Each test builds a tiny wheelhouse on the volume (the offline find-links path the launcher supports)
and a stand-in app at $VOLUME/app that records how it was started, so "reached the app" is visible.
uv runs with its index disabled: nothing here touches the network.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "launcher" / "entrypoint.sh"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)

FAKE_APP = '''
import json, os, signal, sys, time
import tryon_probe

record = {"pid": os.getpid(), "exe": sys.executable, "args": sys.argv[1:], "probe": tryon_probe.VERSION,
          "cwd": os.getcwd(), "volume": os.environ["TRYON_VOLUME"], "app_file": __file__}
folder = os.path.join(os.environ["TRYON_VOLUME"], "started")
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
    json.dump(record, handle)
if "wait-for-signal" in sys.argv:
    def stop(signum, frame):
        with open(os.path.join(folder, f"{os.getpid()}.terminated"), "w") as handle:
            handle.write(str(signum))
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
'''


def make_wheel(folder: Path, version: str, payload_mb: int = 0) -> Path:
    """A real (pure-Python) wheel for the package tryon-probe, optionally carrying incompressible bulk."""
    files = {
        "tryon_probe/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"tryon_probe-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: tryon-probe\nVersion: {version}\n"
        .encode(),
        f"tryon_probe-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    if payload_mb:
        files["tryon_probe/payload.bin"] = os.urandom(payload_mb * 1024 * 1024)

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items())
    record += f"tryon_probe-{version}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tryon_probe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"tryon_probe-{version}.dist-info/RECORD", record)
    return path


@pytest.fixture
def volume(tmp_path) -> Path:
    volume = tmp_path / "volume"
    make_wheel(volume / "wheels", "1.0")
    (volume / "app").mkdir(parents=True)
    (volume / "app" / "__main__.py").write_text(FAKE_APP)
    return volume


@pytest.fixture
def requirements(tmp_path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("tryon-probe==1.0\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_env(volume: Path, local: Path, requirements: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "UV_", "PORT"))}
    env["PORT"] = str(free_port())  # where /ping answers while it builds or unpacks
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env.update({
        "PATH": f"{Path(uv).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        "TRYON_VOLUME": str(volume), "TRYON_LOCAL_DIR": str(local), "TRYON_REQUIREMENTS": str(requirements),
        "TRYON_PYTHON": BASE_PYTHON, "UV_NO_INDEX": "1", "UV_OFFLINE": "1",
    })
    env.update(extra)
    return env


def launch(volume, local, requirements, *args, timeout=120, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=launcher_env(volume, local, requirements, **extra),
                          capture_output=True, text=True, timeout=timeout, cwd=local.parent)


def started(volume: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((volume / "started").glob("*.json"))]


def archives(volume: Path) -> list[str]:
    """Every published file, as '<key>/<name>' (build folders, locks and temp files left out)."""
    envs = volume / "envs"
    if not envs.exists():
        return []
    return sorted(f"{key.name}/{p.name}" for key in envs.iterdir() if key.is_dir()
                  for p in key.iterdir() if not p.name.startswith(".") and p.name != "last-used")


def key_dirs(volume: Path) -> list[Path]:
    return sorted(p for p in (volume / "envs").iterdir() if p.is_dir())


def manifest(key_dir: Path) -> dict:
    """The key's manifest: its fields, and its parts as {file: (size, sha256)}."""
    fields, parts = {}, {}
    for line in (key_dir / "manifest").read_text().splitlines():
        name, _, value = line.partition("=")
        if name == "part":
            file, size, sha = value.split()
            parts[file] = (int(size), sha)
        else:
            fields[name] = value
    return {**fields, "parts": parts}


class Worker:
    """One launcher process, its stderr in a file so the test can watch it while it runs."""

    def __init__(self, volume: Path, local: Path, requirements: Path, *args: str, **extra: str):
        self.local = local
        local.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = local.parent / f"{local.name}.log"
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["bash", str(ENTRYPOINT), *args], stderr=log, stdout=subprocess.DEVNULL,
                                         env=launcher_env(volume, local, requirements, **extra))

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None or text in self.log, f"exited before {text!r}:\n{self.log}"
            assert time.monotonic() < deadline, f"never saw {text!r}:\n{self.log}"
            time.sleep(0.02)

    @contextlib.contextmanager
    def held_frozen(self):
        """Keeps the launcher stopped (SIGSTOP: no step, no heartbeat) until the block ends, whatever its
        failpoint's pause: for a test whose point is what the builder does after another worker finished,
        not a race between the pause's seconds and how fast that worker is on a busy machine."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def finish(self, timeout: float = 120) -> tuple[int, float]:
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - self.started


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at path (read-only, or tiny, as options say) for the test's duration; skips without root."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip(f"mounting a tmpfs ({options}) needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)
