"""launcher/entrypoint.sh with real processes, real uv and a temp folder as the volume: builds,
restores, warm starts, concurrency, settings and --plan (faults: test_launcher_faults.py)."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.launcher_kit import (
    BASE_PYTHON,
    ENTRYPOINT,
    archives,
    key_dirs,
    launch,
    launcher_env,
    make_wheel,
    manifest,
    started,
    tmpfs,
)


def test_first_start_builds_next_worker_unpacks_warm_start_does_neither(volume, requirements, tmp_path):
    first = launch(volume, tmp_path / "worker1", requirements, "hello")
    assert first.returncode == 0, first.stderr
    assert "building runtime" in first.stderr and "runtime published as build" in first.stderr
    names = archives(volume)
    [key] = key_dirs(volume)
    published = manifest(key)
    build = published["build"]
    # The manifest names this build's parts, each with its size and sha256, and the build's own record.
    assert names == sorted([f"{key.name}/manifest", f"{key.name}/{build}.manifest",
                            *(f"{key.name}/{part}" for part in published["parts"])])
    for part, (size, sha) in published["parts"].items():
        data = (key / part).read_bytes()
        assert part.startswith(build + ".p") and len(data) == size and hashlib.sha256(data).hexdigest() == sha

    second = launch(volume, tmp_path / "worker2", requirements, "hello")
    assert second.returncode == 0, second.stderr
    assert f"runtime restored from build {build}" in second.stderr and "building" not in second.stderr

    warm = launch(volume, tmp_path / "worker2", requirements, "hello")
    assert warm.returncode == 0, warm.stderr
    assert "warm start" in warm.stderr
    assert "building" not in warm.stderr and "restored" not in warm.stderr
    assert archives(volume) == names
    assert warm.stderr.count("[launcher]") <= 6, warm.stderr  # a warm start says little

    runs = started(volume)
    assert len(runs) == 3
    pythons = {str(tmp_path / worker / "runtime/venv/bin/python") for worker in ("worker1", "worker2")}
    assert {run["exe"] for run in runs} == pythons
    assert all(run["args"] == ["hello"] and run["probe"] == "1.0" for run in runs)
    # The app runs from a local copy, with the working directory on local disk.
    assert all(not run["app_file"].startswith(str(volume)) and not run["cwd"].startswith(str(volume)) for run in runs)


def test_a_warm_start_runs_no_interpreter_to_learn_its_version(volume, requirements, tmp_path):
    """The key names a path interpreter's version. Asking it costs a warm start tens of milliseconds, so
    the answer is kept with the interpreter's identity and asked again only when the file is replaced."""
    asked = tmp_path / "asked.log"
    wrapper = tmp_path / "bin" / "python3"
    wrapper.parent.mkdir()

    def install_wrapper(note: str) -> None:  # written under a temporary name and renamed, as a package upgrade does
        temporary = wrapper.with_name("python3.new")
        temporary.write_text(f'#!/bin/sh\n# {note}\ncase "$*" in *python_version*) echo asked >> {asked};; esac\n'
                             f'exec {BASE_PYTHON} "$@"\n')
        temporary.chmod(0o755)
        temporary.replace(wrapper)

    def times_asked() -> int:
        return len(asked.read_text().splitlines()) if asked.exists() else 0

    install_wrapper("first")
    local = tmp_path / "worker"
    first = launch(volume, local, requirements, TRYON_PYTHON=str(wrapper))
    assert first.returncode == 0, first.stderr
    assert "runtime published as build" in first.stderr and times_asked() == 1
    for _ in range(2):
        warm = launch(volume, local, requirements, TRYON_PYTHON=str(wrapper))
        assert warm.returncode == 0 and "warm start" in warm.stderr, warm.stderr
    assert times_asked() == 1
    install_wrapper("upgraded")  # a new file at the same path: its version is asked once more, then kept
    again = launch(volume, local, requirements, TRYON_PYTHON=str(wrapper))
    assert again.returncode == 0 and "warm start" in again.stderr, again.stderr
    warm = launch(volume, local, requirements, TRYON_PYTHON=str(wrapper))
    assert warm.returncode == 0 and "warm start" in warm.stderr, warm.stderr
    assert times_asked() == 2
    # --plan changes nothing on local disk, the version cache included.
    cache = (local / ".python-version").read_text()
    install_wrapper("planned")
    assert launch(volume, local, requirements, "--plan", TRYON_PYTHON=str(wrapper)).returncode == 0
    assert (local / ".python-version").read_text() == cache and times_asked() == 3


def test_launcher_logs_each_phase_with_its_duration(volume, requirements, tmp_path):
    done = launch(volume, tmp_path / "w", requirements)
    assert done.returncode == 0, done.stderr
    for pattern in (r"runtime built in \d+\.\d s", r"published as build \S+ \(.*\) in \d+\.\d s",
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
    assert sum("restored from build" in log for log in logs) == 5
    assert sorted(run["args"][0] for run in started(volume)) == [f"worker{i}" for i in range(6)]
    [key] = key_dirs(volume)
    assert not (key / ".lock").exists() and not list((key / ".builds").iterdir())


def test_changed_requirements_rebuild_while_the_old_archive_stays_usable(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "w1", requirements).returncode == 0
    old = set(archives(volume))

    make_wheel(volume / "wheels", "2.0", payload_mb=80)
    new_requirements = tmp_path / "requirements-new.txt"
    new_requirements.write_text("tryon-probe==2.0\n")
    builder = subprocess.Popen(["bash", str(ENTRYPOINT), "new"], stderr=subprocess.PIPE, text=True,
                               env=launcher_env(volume, tmp_path / "w2", new_requirements))
    deadline = time.monotonic() + 60
    while not any((key / ".lock").exists() for key in key_dirs(volume)):
        assert time.monotonic() < deadline and builder.poll() is None, "the new build never took its lock"
        time.sleep(0.005)
    # While the new runtime is being built, a worker with the old requirements starts from the old archive.
    old_worker = launch(volume, tmp_path / "w3", requirements, "old")
    assert old_worker.returncode == 0, old_worker.stderr
    assert "restored from build" in old_worker.stderr
    _, err = builder.communicate(timeout=180)
    assert builder.returncode == 0, err
    assert "building runtime" in err
    assert old < set(archives(volume)) and len(key_dirs(volume)) == 2
    probes = {run["args"][0]: run["probe"] for run in started(volume)}
    assert probes["old"] == "1.0" and probes["new"] == "2.0"


def test_missing_volume_fails_with_a_sentence(requirements, tmp_path):
    done = launch(tmp_path / "not-mounted", tmp_path / "w", requirements)
    assert done.returncode != 0
    assert f"TRYON_VOLUME={tmp_path / 'not-mounted'} does not exist: attach the network volume" in done.stderr


def test_read_only_volume_fails_with_a_sentence(volume, requirements, tmp_path):
    with tmpfs(tmp_path / "ro", "ro") as readonly:
        done = launch(readonly, tmp_path / "w", requirements)
    assert done.returncode != 0
    assert f"volume {readonly} is not writable and holds no published runtime" in done.stderr
    assert "mount it read-write" in done.stderr


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
    assert "build lock:   no build lock" in done.stdout and "gpu:          none (torch backend cpu)" in done.stdout
    assert re.search(r"local disk:   \d+\.\d MiB free at ", done.stdout)
    assert f"python:       {BASE_PYTHON} (an existing interpreter)" in done.stdout

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
    [venv] = (volume / "venvs").iterdir()
    assert (venv / "venv" / "bin" / "python").exists() and venv.name == key_dirs(volume)[0].name
    again = launch(volume, tmp_path / "w3", requirements, TRYON_ENV_MODE="volume")
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stderr and "warm start" in again.stderr
    assert not list((volume / "envs").rglob("*.tar.zst"))
    assert {run["exe"] for run in started(volume)} == {str(venv / "venv" / "bin" / "python")}


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
