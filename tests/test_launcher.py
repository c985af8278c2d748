"""launcher/entrypoint.sh with real processes, real uv and a temp folder as the volume.

Each test builds a tiny wheelhouse on the volume (the offline find-links path the launcher supports)
and a stand-in app at $VOLUME/app that records how it was started, so "reached the app" is visible.
uv runs with its index disabled: nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
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


def launcher_env(volume: Path, local: Path, requirements: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "UV_"))}
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
    return sorted(p.name for p in (volume / "envs").iterdir()) if (volume / "envs").exists() else []


def test_first_start_builds_next_worker_unpacks_warm_start_does_neither(volume, requirements, tmp_path):
    first = launch(volume, tmp_path / "worker1", requirements, "hello")
    assert first.returncode == 0, first.stderr
    assert "building runtime" in first.stderr and "runtime published as one archive" in first.stderr
    names = archives(volume)
    assert len(names) == 2 and names[0].endswith(".manifest") and names[1].endswith(".tar.zst")

    second = launch(volume, tmp_path / "worker2", requirements, "hello")
    assert second.returncode == 0, second.stderr
    assert "runtime restored from archive" in second.stderr and "building" not in second.stderr

    warm = launch(volume, tmp_path / "worker2", requirements, "hello")
    assert warm.returncode == 0, warm.stderr
    assert "warm start" in warm.stderr
    assert "building" not in warm.stderr and "restored" not in warm.stderr
    assert archives(volume) == names

    runs = started(volume)
    assert len(runs) == 3
    pythons = {str(tmp_path / worker / "runtime/venv/bin/python") for worker in ("worker1", "worker2")}
    assert {run["exe"] for run in runs} == pythons
    assert all(run["args"] == ["hello"] and run["probe"] == "1.0" for run in runs)
    # The app runs from a local copy, with the working directory on local disk.
    assert all(not run["app_file"].startswith(str(volume)) and not run["cwd"].startswith(str(volume)) for run in runs)


def test_launcher_logs_each_phase_with_its_duration(volume, requirements, tmp_path):
    done = launch(volume, tmp_path / "w", requirements)
    assert done.returncode == 0, done.stderr
    for pattern in (r"runtime built in \d+\.\d s", r"published as one archive \(.*\) in \d+\.\d s",
                    r"starting the app from the volume copy after \d+\.\d s"):
        assert re.search(pattern, done.stderr), pattern
    assert started(volume)[0]["args"] == ["serve"]  # the default command


def test_six_simultaneous_starts_on_an_empty_volume_build_once(volume, requirements, tmp_path):
    procs = [subprocess.Popen(["bash", str(ENTRYPOINT), f"worker{i}"], stderr=subprocess.PIPE, text=True,
                              env=launcher_env(volume, tmp_path / f"w{i}", requirements, TRYON_LOCK_STALE_S="30"))
             for i in range(6)]
    logs = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        logs.append(err)
    assert sum("building runtime" in log for log in logs) == 1
    assert sum("restored from archive" in log for log in logs) == 5
    assert sorted(run["args"][0] for run in started(volume)) == [f"worker{i}" for i in range(6)]
    assert not any(name.startswith(".lock") for name in os.listdir(volume / "envs"))


def test_killed_builder_leaves_no_usable_partial_and_its_lock_is_taken_over(volume, requirements, tmp_path):
    make_wheel(volume / "wheels", "2.0", payload_mb=120)  # packing takes long enough to be caught mid-way
    requirements.write_text("tryon-probe==2.0\n")
    env = launcher_env(volume, tmp_path / "w1", requirements, TRYON_LOCK_STALE_S="2")
    builder = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    envs = volume / "envs"
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".") and ".tar.zst.tmp." in p.name for p in envs.glob(".*")):
        assert builder.poll() is None, builder.stderr.read()
        assert time.monotonic() < deadline, "the builder never started packing"
        time.sleep(0.005)
    os.killpg(builder.pid, signal.SIGKILL)  # the whole worker dies, as a container does
    builder.wait()
    assert not list(envs.glob("*.manifest")), "a manifest was published by a killed build"
    assert any(p.name.startswith(".lock-") for p in envs.iterdir()), "the dead builder's lock should remain"

    # A fresh worker does not use the partial archive: it waits out the dead heartbeat, takes over, builds.
    done = launch(volume, tmp_path / "w2", requirements, "after-crash", TRYON_LOCK_STALE_S="2")
    assert done.returncode == 0, done.stderr
    assert "took over a stale build lock" in done.stderr
    assert "building runtime" in done.stderr and "restored from archive" not in done.stderr
    names = sorted(p.name for p in envs.iterdir())
    assert len(names) == 2 and not any(n.startswith(".") for n in names), names
    manifest = (envs / names[0]).read_text()
    assert f"size={(envs / names[1]).stat().st_size}" in manifest
    assert started(volume)[-1]["probe"] == "2.0"


def test_changed_requirements_rebuild_while_the_old_archive_stays_usable(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "w1", requirements).returncode == 0
    old = set(archives(volume))

    make_wheel(volume / "wheels", "2.0", payload_mb=80)
    new_requirements = tmp_path / "requirements-new.txt"
    new_requirements.write_text("tryon-probe==2.0\n")
    builder = subprocess.Popen(["bash", str(ENTRYPOINT), "new"], stderr=subprocess.PIPE, text=True,
                               env=launcher_env(volume, tmp_path / "w2", new_requirements))
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".lock-") for p in (volume / "envs").iterdir()):
        assert time.monotonic() < deadline and builder.poll() is None, "the new build never took its lock"
        time.sleep(0.005)
    # While the new runtime is being built, a worker with the old requirements starts from the old archive.
    old_worker = launch(volume, tmp_path / "w3", requirements, "old")
    assert old_worker.returncode == 0, old_worker.stderr
    assert "restored from archive" in old_worker.stderr
    _, err = builder.communicate(timeout=180)
    assert builder.returncode == 0, err
    assert "building runtime" in err
    assert old < set(archives(volume)) and len(archives(volume)) == 4
    probes = {run["args"][0]: run["probe"] for run in started(volume)}
    assert probes["old"] == "1.0" and probes["new"] == "2.0"


def test_missing_volume_fails_with_a_sentence(requirements, tmp_path):
    done = launch(tmp_path / "not-mounted", tmp_path / "w", requirements)
    assert done.returncode != 0
    assert f"TRYON_VOLUME={tmp_path / 'not-mounted'} does not exist: attach the network volume" in done.stderr


def test_read_only_volume_fails_with_a_sentence(volume, requirements, tmp_path):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(readonly)], capture_output=True).returncode:
        pytest.skip("mounting a read-only filesystem needs root")
    try:
        done = launch(readonly, tmp_path / "w", requirements)
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert done.returncode != 0
    assert f"volume {readonly} is not writable: mount it read-write" in done.stderr


def snapshot(*folders: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for folder in folders if folder.exists() for p in [folder, *folder.rglob("*")]}


def test_plan_tells_and_changes_nothing(volume, requirements, tmp_path):
    local = tmp_path / "w"
    before = snapshot(volume, local)
    done = launch(volume, local, requirements, "--plan")
    assert done.returncode == 0, done.stderr
    assert snapshot(volume, local) == before and not local.exists()
    assert "would:        build runtime" in done.stdout
    assert "app source:   volume" in done.stdout
    assert "command:      python -m app serve (listening on 0.0.0.0)" in done.stdout

    assert launch(volume, local, requirements).returncode == 0
    assert "would:        start warm" in launch(volume, local, requirements, "--plan").stdout
    assert "would:        unpack" in launch(volume, tmp_path / "other", requirements, "--plan").stdout
    shutil.rmtree(volume / "app")
    assert "app source:   image" in launch(volume, local, requirements, "--plan").stdout


def test_volume_mode_builds_the_venv_on_the_volume_once(volume, requirements, tmp_path):
    plan = launch(volume, tmp_path / "w0", requirements, "--plan", TRYON_ENV_MODE="volume")
    assert plan.returncode == 0 and "would:        build runtime" in plan.stdout, plan.stderr
    # Two workers at once: one builds, the other waits and then uses the same venv.
    procs = [subprocess.Popen(["bash", str(ENTRYPOINT)], stderr=subprocess.PIPE, text=True,
                              env=launcher_env(volume, tmp_path / f"w{i}", requirements, TRYON_ENV_MODE="volume"))
             for i in (1, 2)]
    logs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    assert sum("building runtime" in log for log in logs) == 1
    assert (volume / "venv" / "bin" / "python").exists()
    again = launch(volume, tmp_path / "w3", requirements, TRYON_ENV_MODE="volume")
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stderr and "warm start" in again.stderr
    assert not list((volume / "envs").glob("*.tar.zst"))
    assert {run["exe"] for run in started(volume)} == {str(volume / "venv" / "bin" / "python")}


def test_signals_reach_the_app(volume, requirements, tmp_path):
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "wait-for-signal"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=launcher_env(volume, tmp_path / "w", requirements))
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert started(volume)[0]["pid"] == proc.pid  # exec: the launcher's process became the app
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert (volume / "started" / f"{proc.pid}.terminated").read_text() == str(int(signal.SIGTERM))


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TRYON_ENV_MODE", "docker", "TRYON_ENV_MODE=docker is not valid: use archive or volume"),
    ("TRYON_LOCK_STALE_S", "soon", "TRYON_LOCK_STALE_S=soon is not valid"),
    ("TRYON_PYTHON", "/no/python3", "TRYON_PYTHON=/no/python3 is not an executable interpreter"),
    ("TRYON_REQUIREMENTS", "/no/requirements.txt", "requirements file /no/requirements.txt not found"),
])
def test_bad_settings_fail_clearly(volume, requirements, tmp_path, variable, value, message):
    done = launch(volume, tmp_path / "w", requirements, **{variable: value})
    assert done.returncode != 0
    assert message in done.stderr
