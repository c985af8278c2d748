"""The launcher when things go wrong: builders frozen or killed at every phase, damaged archives,
clock steps, several CUDA drivers, old keys, read-only volumes. Real processes, real uv, no network.

The failpoints (TRYON_FAILPOINTS, for tests only) freeze the builder without a heartbeat, as SIGSTOP, a
swapping host or a stalled disk flush would, or kill it with SIGKILL. Whatever happens, every later
worker must start and import the exact payload, and the volume must end whole and tidy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launcher_kit import (
    ENTRYPOINT,
    Worker,
    key_dirs,
    launch,
    launcher_env,
    make_wheel,
    manifest,
    started,
    tmpfs,
)

STALE = 2  # TRYON_LOCK_STALE_S for these tests: a frozen builder loses its lock after 2 s
PHASES = ["locked", "venv-built", "installed", "packed", "archive-published", "manifest-published"]
REPORT = os.environ.get("LAUNCHER_FAULT_REPORT")  # a JSON-lines file for bench/launcher_faults.py


def check_published(volume: Path) -> str:
    """The key's manifest names parts that exist with its sizes and sha256; returns the build id."""
    [key] = key_dirs(volume)
    published = manifest(key)
    assert published["parts"]
    for part, (size, sha) in published["parts"].items():
        data = (key / part).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, part
    return published["build"]


def leftovers(volume: Path) -> list[str]:
    [key] = key_dirs(volume)
    found = [p.name for p in key.iterdir() if p.name.startswith((".lock", ".clock")) or ".tmp." in p.name]
    if (key / ".builds").exists():
        found += [f".builds/{p.name}" for p in (key / ".builds").iterdir()]
    return found


@pytest.mark.parametrize("action", ["kill", "pause"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_builder_killed_or_frozen_at_any_phase_never_stops_the_next_workers(volume, requirements, tmp_path,
                                                                               phase, action):
    failpoint = "kill" if action == "kill" else f"pause:{3 * STALE}"  # frozen well past the stale limit
    builder = Worker(volume, tmp_path / "builder", requirements, "builder",
                     TRYON_FAILPOINTS=f"{phase}={failpoint}", TRYON_LOCK_STALE_S=str(STALE))
    builder.wait_for(f"failpoint {phase}")
    if action == "kill":
        assert builder.finish()[0] == -9
    arrived = time.monotonic()
    workers = [Worker(volume, tmp_path / f"w{i}", requirements, f"w{i}", TRYON_LOCK_STALE_S=str(STALE))
               for i in range(3)]
    results = [worker.finish() for worker in workers]
    assert [code for code, _ in results] == [0, 0, 0], "\n\n".join(w.log for w in workers)
    if action == "pause":
        code, _ = builder.finish()
        assert code == 0, builder.log  # the frozen builder wakes up and starts too
    logs = [builder.log] + [w.log for w in workers]
    builds = sum("building runtime" in log for log in logs)
    assert 1 <= builds <= 2, logs  # the builder, and at most one worker that took over from it
    build = check_published(volume)

    # A later worker restores exactly that build, and the volume is left tidy.
    time.sleep(2 * STALE + 0.5)
    late = launch(volume, tmp_path / "late", requirements, "late", TRYON_LOCK_STALE_S=str(STALE))
    assert late.returncode == 0, late.stderr
    assert f"restored from build {build}" in late.stderr
    assert leftovers(volume) == [], leftovers(volume)
    runs = started(volume)
    names = {run["args"][0] for run in runs}
    assert {"w0", "w1", "w2", "late"} <= names and (action == "kill" or "builder" in names)
    assert all(run["probe"] == "1.0" for run in runs)
    for run in runs:  # each ran its own local copy of the runtime
        assert run["exe"] == str(tmp_path / run["args"][0] / "runtime" / "venv" / "bin" / "python")

    if REPORT:
        took = [round(t, 1) for _, t in results]
        did = ["took over and built" if "took over" in w.log else "built" if "building runtime" in w.log
               else "restored" for w in workers]
        with open(REPORT, "a") as report:
            report.write(json.dumps({"phase": phase, "action": action, "stale_s": STALE, "builds": builds,
                                     "workers": did, "seconds": took,
                                     "first_ready_s": round(min(took), 1),
                                     "since_arrival_s": round(time.monotonic() - arrived, 1)}) + "\n")


def test_a_worker_killed_while_unpacking_leaves_nothing_that_stops_the_next(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "builder", requirements).returncode == 0
    victim = Worker(volume, tmp_path / "w", requirements, TRYON_FAILPOINTS="unpacking=kill")
    victim.wait_for("failpoint unpacking")
    assert victim.finish()[0] == -9
    assert list((tmp_path / "w").glob("runtime.unpack.*")), "the kill should leave a partial unpack"
    again = launch(volume, tmp_path / "w", requirements, "again")
    assert again.returncode == 0, again.stderr
    assert "left by a stopped launcher" in again.stderr and "restored from build" in again.stderr
    assert not list((tmp_path / "w").glob("runtime.unpack.*")) and not list((tmp_path / "w").glob(".sums.*"))
    assert started(volume)[-1]["probe"] == "1.0"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing"])
def test_a_damaged_archive_is_moved_aside_and_rebuilt_once(volume, requirements, tmp_path, damage):
    make_wheel(volume / "wheels", "2.0", payload_mb=2)  # parts big enough that damage hits data
    requirements.write_text("tryon-probe==2.0\n")
    assert launch(volume, tmp_path / "builder", requirements).returncode == 0
    [key] = key_dirs(volume)
    bad_build = manifest(key)["build"]
    part = max(manifest(key)["parts"], key=lambda name: manifest(key)["parts"][name][0])
    if damage == "flipped byte":
        flip_a_byte(key / part)
    elif damage == "truncated":
        os.truncate(key / part, (key / part).stat().st_size // 2)
    else:
        (key / part).unlink()

    workers = [Worker(volume, tmp_path / f"w{i}", requirements, f"w{i}", TRYON_LOCK_STALE_S="30") for i in range(3)]
    assert [w.finish()[0] for w in workers] == [0, 0, 0], "\n\n".join(w.log for w in workers)
    logs = [w.log for w in workers]
    assert sum("building runtime" in log for log in logs) == 1, logs
    assert any(f"build {bad_build} of runtime {key.name} failed its check" in log for log in logs), logs
    assert check_published(volume) != bad_build
    kept = sorted(p.name for p in key.glob(f"{bad_build}.*"))
    assert kept and all(name.endswith(".bad") for name in kept), kept  # kept for inspection
    assert all(run["probe"] == "2.0" for run in started(volume))
    # Later workers restore the new build without a word about damage.
    later = launch(volume, tmp_path / "later", requirements)
    assert later.returncode == 0 and "failed its check" not in later.stderr and "restored" in later.stderr


def test_a_crash_after_the_archive_is_published_costs_newcomers_no_wait(volume, requirements, tmp_path):
    """The default stale limit (120 s) applies, yet the complete archive is used at once."""
    builder = Worker(volume, tmp_path / "builder", requirements, TRYON_FAILPOINTS="archive-published=kill")
    builder.wait_for("failpoint archive-published")
    assert builder.finish()[0] == -9
    start = time.monotonic()
    newcomer = launch(volume, tmp_path / "newcomer", requirements)
    took = time.monotonic() - start
    assert newcomer.returncode == 0, newcomer.stderr
    assert "that no manifest named" in newcomer.stderr and "building" not in newcomer.stderr
    assert took < 30, took
    check_published(volume)


def test_a_waiter_says_when_the_heartbeat_has_stopped(volume, requirements, tmp_path):
    builder = Worker(volume, tmp_path / "builder", requirements, TRYON_FAILPOINTS="installed=kill")
    builder.wait_for("failpoint installed")
    builder.finish()
    waiter = Worker(volume, tmp_path / "waiter", requirements, TRYON_LOCK_STALE_S="14")
    waiter.wait_for("its heartbeat has not moved for", timeout=30)
    assert "so it is taken over at 14 s" in waiter.log
    assert waiter.finish()[0] == 0
    assert "took over the build lock from build" in waiter.log and "(host " in waiter.log


def test_plan_names_the_lock_holder_its_heartbeat_and_when_it_is_taken_over(volume, requirements, tmp_path):
    builder = Worker(volume, tmp_path / "builder", requirements, TRYON_FAILPOINTS="installed=pause:30")
    builder.wait_for("failpoint installed")
    try:
        plan = launch(volume, tmp_path / "other", requirements, "--plan", TRYON_LOCK_STALE_S="45")
    finally:
        builder.proc.kill()
        builder.finish()
    assert plan.returncode == 0, plan.stderr
    assert "build lock:   held by build " in plan.stdout and f"pid {builder.proc.pid}" in plan.stdout
    assert "its heartbeat was last written" in plan.stdout and "take it over after 45 s without one" in plan.stdout
    assert "would:        wait for the build in progress" in plan.stdout


def test_a_stray_lock_file_is_removed_by_its_age_and_the_build_goes_on(volume, requirements, tmp_path):
    """A 0-byte file named .lock (not a lock folder) on an empty volume: no builder can hold it or beat for
    it, so it is judged by its age like a dead lock, removed, and the build goes on; --plan says so."""
    look = launch(volume, tmp_path / "look", requirements, "--plan")
    key = next(line.split()[-1] for line in look.stdout.splitlines() if line.startswith("key:"))
    stray = volume / "envs" / key / ".lock"
    stray.parent.mkdir(parents=True)
    stray.touch()
    plan = launch(volume, tmp_path / "look", requirements, "--plan", TRYON_LOCK_STALE_S=str(STALE))
    assert plan.returncode == 0, plan.stderr
    assert ".lock is a stray file, not a lock folder" in plan.stdout and "no build lock" not in plan.stdout
    assert "would:        remove the stray .lock" in plan.stdout
    began = time.monotonic()
    worker = launch(volume, tmp_path / "worker", requirements, TRYON_LOCK_STALE_S=str(STALE),
                    TRYON_BUILD_WAIT_S="60")
    assert worker.returncode == 0, worker.stderr
    assert "removed a stray .lock that was not a lock folder" in worker.stderr
    assert "gave up" not in worker.stderr and time.monotonic() - began < 60
    check_published(volume)
    assert leftovers(volume) == []


def test_a_stray_or_dead_foreign_lock_next_to_a_published_build_is_cleaned_up(volume, requirements, tmp_path):
    """A worker that restores still tidies the lock's place: a stray .lock file, and the lock of another
    build whose heartbeat stopped long ago (judged by the volume's clock, at twice the stale limit)."""
    assert launch(volume, tmp_path / "first", requirements).returncode == 0
    [key] = key_dirs(volume)
    long_ago = time.time() - 600
    stray = key / ".lock"
    stray.touch()
    os.utime(stray, (long_ago, long_ago))
    second = launch(volume, tmp_path / "second", requirements, TRYON_LOCK_STALE_S=str(STALE))
    assert second.returncode == 0, second.stderr
    assert "removed a stray .lock next to the published build" in second.stderr
    assert leftovers(volume) == []

    lock, builds = key / ".lock", key / ".builds" / "deadbeef"
    lock.mkdir()
    (lock / "owner").write_text("token=deadbeef\nhost=elsewhere\npid=1\nstarted=2026-12-01T00:00:00Z\n")
    builds.mkdir(parents=True)
    (builds / "heartbeat").write_text("7\n")
    for path in (lock / "owner", lock, builds / "heartbeat", builds):
        os.utime(path, (long_ago, long_ago))
    third = launch(volume, tmp_path / "third", requirements, TRYON_LOCK_STALE_S=str(STALE))
    assert third.returncode == 0, third.stderr
    assert "removed the lock of build deadbeef: its builder stopped" in third.stderr
    assert leftovers(volume) == []


def doctor(volume: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "doctor", "--volume", str(volume)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])


def test_the_doctor_reads_the_published_runtime_and_spots_damage(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "w", requirements).returncode == 0
    [key] = key_dirs(volume)
    healthy = doctor(volume)
    assert f"runtime {key.name}: build {manifest(key)['build']} (" in healthy.stdout
    assert f"in {len(manifest(key)['parts'])} parts, cpu, built " in healthy.stdout
    part = next(iter(manifest(key)["parts"]))
    os.truncate(key / part, 1)
    damaged = doctor(volume)
    assert f"runtime {key.name}: build {manifest(key)['build']} is damaged ({part})" in damaged.stdout


def fake_nvidia_smi(folder: Path, driver: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    calls = folder / "calls"
    script.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'NVIDIA H100 80GB HBM3, {driver}, 81559 MiB'\n")
    script.chmod(0o755)
    return folder


def test_five_drivers_make_two_builds(volume, requirements, tmp_path):
    drivers = ["535.183.01", "550.127.05", "565.57.01", "570.124.06", "575.57.08"]
    logs = []
    for i, driver in enumerate(drivers):
        bin_dir = fake_nvidia_smi(tmp_path / f"gpu{i}", driver)
        env_path = f"{bin_dir}:{launcher_env(volume, tmp_path, requirements)['PATH']}"
        done = launch(volume, tmp_path / f"w{i}", requirements, PATH=env_path)
        assert done.returncode == 0, done.stderr
        logs.append(done.stderr)
        # One nvidia-smi call per start.
        assert len((bin_dir / "calls").read_text().split()) == 1
    backends = [log.split("torch backend ")[1].split(")")[0] for log in logs]
    assert backends == ["cu126", "cu126", "cu126", "cu128", "cu128"]
    assert sum("building runtime" in log for log in logs) == 2
    assert len(key_dirs(volume)) == 2
    # The key names the backend, not the driver or any local path.
    for key in key_dirs(volume):
        inputs = "\n".join(line for line in (key / "manifest").read_text().splitlines() if line.startswith("input."))
        assert "driver" not in inputs and str(tmp_path) not in inputs.replace(
            launcher_env(volume, tmp_path, requirements)["TRYON_PYTHON"], "")
    # A warm start asks nvidia-smi once too.
    warm_bin = fake_nvidia_smi(tmp_path / "gpu-warm", drivers[0])
    warm = launch(volume, tmp_path / "w0", requirements,
                  PATH=f"{warm_bin}:{launcher_env(volume, tmp_path, requirements)['PATH']}")
    assert warm.returncode == 0 and "warm start" in warm.stderr
    assert len((warm_bin / "calls").read_text().split()) == 1


def test_build_only_publishes_a_cuda_runtime_from_a_machine_without_a_gpu(volume, requirements, tmp_path):
    built = launch(volume, tmp_path / "cpu-pod", requirements, "--build-only", TRYON_TORCH_BACKEND="cu128")
    assert built.returncode == 0, built.stderr
    assert "is published" in built.stderr and started(volume) == []  # the app never started
    again = launch(volume, tmp_path / "cpu-pod", requirements, "--build-only", TRYON_TORCH_BACKEND="cu128")
    assert again.returncode == 0 and "already published" in again.stderr and "building" not in again.stderr
    gpu = fake_nvidia_smi(tmp_path / "gpu", "570.124.06")
    worker = launch(volume, tmp_path / "gpu-worker", requirements,
                    PATH=f"{gpu}:{launcher_env(volume, tmp_path, requirements)['PATH']}")
    assert worker.returncode == 0, worker.stderr
    assert "restored from build" in worker.stderr and "building" not in worker.stderr


def age(path: Path, minutes: float) -> None:
    then = time.time() - minutes * 60
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then), follow_symlinks=False)


def test_old_keys_are_removed_beyond_env_keep_but_never_within_the_hour(volume, requirements, tmp_path):
    envs = volume / "envs"
    for name, minutes in (("aaaaaaaaaaaaaaaa", 300), ("bbbbbbbbbbbbbbbb", 200), ("cccccccccccccccc", 20)):
        (envs / name).mkdir(parents=True)
        (envs / name / "manifest").write_text("format=2\n")
        (envs / name / "x.p00.tar.zst").write_bytes(b"old")
        age(envs / name, minutes)
    legacy = [envs / "0123456789abcdef.tar.zst", envs / "0123456789abcdef.manifest"]
    for path in legacy:
        path.write_bytes(b"format 1")
        age(path, 120)
    done = launch(volume, tmp_path / "w", requirements, TRYON_ENV_KEEP="2")
    assert done.returncode == 0, done.stderr
    remaining = sorted(p.name for p in envs.iterdir())
    # Kept: this key, the newest other key (KEEP=2), and one touched 20 minutes ago.
    assert "aaaaaaaaaaaaaaaa" not in remaining and "bbbbbbbbbbbbbbbb" not in remaining
    assert "cccccccccccccccc" in remaining and len([r for r in remaining if len(r) == 16]) == 2
    assert not any(path.exists() for path in legacy)
    assert "TRYON_ENV_KEEP=2" in done.stderr


def test_volume_mode_keeps_one_venv_per_key_under_running_workers(volume, requirements, tmp_path):
    running = subprocess.Popen(["bash", str(ENTRYPOINT), "wait-for-signal"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=launcher_env(volume, tmp_path / "w1", requirements, TRYON_ENV_MODE="volume"))
    try:
        assert running.stdout.readline().strip() == "ready"
        first_exe = started(volume)[0]["exe"]
        make_wheel(volume / "wheels", "2.0")
        other = tmp_path / "requirements-2.txt"
        other.write_text("tryon-probe==2.0\n")
        done = launch(volume, tmp_path / "w2", other, "second", TRYON_ENV_MODE="volume")
        assert done.returncode == 0, done.stderr
        assert running.poll() is None
        # The first worker's venv is untouched: same interpreter, same package.
        assert Path(first_exe).exists()
        probe = subprocess.run([first_exe, "-c", "import tryon_probe; print(tryon_probe.VERSION)"],
                               capture_output=True, text=True)
        assert probe.stdout.strip() == "1.0"
    finally:
        running.terminate()
        running.wait(timeout=20)
    venvs = sorted(p.name for p in (volume / "venvs").iterdir())
    assert len(venvs) == 2 and venvs == sorted(k.name for k in key_dirs(volume))
    assert {run["probe"] for run in started(volume)} == {"1.0", "2.0"}


@pytest.mark.parametrize("phase", ["locked", "venv-built", "installed"])
def test_volume_mode_a_builder_woken_after_a_takeover_starts_on_the_published_runtime(volume, requirements, tmp_path,
                                                                                      phase):
    """Volume mode builds on the volume, in the build's own folder, which a takeover removes. A builder
    frozen past the stale limit (here: before, during or after its install) wakes to find it gone: it
    starts on the runtime the other worker published, as in archive mode, with no raw tool errors."""
    volume_mode = {"TRYON_ENV_MODE": "volume", "TRYON_LOCK_STALE_S": str(STALE)}
    builder = Worker(volume, tmp_path / "builder", requirements, "builder",
                     TRYON_FAILPOINTS=f"{phase}=pause:{3 * STALE}", **volume_mode)
    builder.wait_for(f"failpoint {phase}")
    with builder.held_frozen():  # it wakes after the other worker published, however long that takes
        other = Worker(volume, tmp_path / "other", requirements, "other", **volume_mode)
        assert other.finish()[0] == 0, other.log
    assert "took over the build lock" in other.log
    code, _ = builder.finish()
    assert code == 0, builder.log
    assert "lost its lock" in builder.log or "another build published" in builder.log, builder.log
    for raw in ("sed:", "can't read", "No such file", "error:"):
        assert raw not in builder.log, builder.log
    [key] = key_dirs(volume)
    published = volume / "venvs" / key.name / "venv" / "bin" / "python"
    assert {run["args"][0]: run["exe"] for run in started(volume)} == {"other": str(published),
                                                                        "builder": str(published)}
    assert all(run["probe"] == "1.0" for run in started(volume))


def test_a_builder_frozen_while_packing_and_taken_over_says_so_without_raw_errors(volume, requirements, tmp_path):
    """Frozen past the stale limit as it packs, the builder wakes to find its build folder on the volume
    removed by the worker that took over: it keeps the other build and starts, and says that, not
    "check free space" over raw tee/tar errors."""
    stale = {"TRYON_LOCK_STALE_S": str(STALE)}
    builder = Worker(volume, tmp_path / "builder", requirements, "builder",
                     TRYON_FAILPOINTS=f"packing=pause:{3 * STALE}", **stale)
    builder.wait_for("failpoint packing")
    with builder.held_frozen():  # it wakes after the other worker published, however long that takes
        other = Worker(volume, tmp_path / "other", requirements, "other", **stale)
        assert other.finish()[0] == 0, other.log
    assert "took over the build lock" in other.log and "runtime published as build" in other.log
    code, _ = builder.finish()
    assert code == 0, builder.log
    assert "was published while this build was stalled: keeping it" in builder.log, builder.log
    for raw in ("free space", "tee:", "tar:", "zstd:", "No such file", "archive_pack:", "heartbeat.tmp", "error:"):
        assert raw not in builder.log, builder.log
    [key] = key_dirs(volume)
    assert manifest(key)["build"] in other.log and len(manifest(key)["parts"]) > 1
    assert sorted(run["args"][0] for run in started(volume)) == ["builder", "other"]
    assert not list((tmp_path / "builder").glob(".parts.*")) and not list((tmp_path / "builder").glob(".pack-errors.*"))


def bind_read_only(source: Path, target: Path) -> bool:
    target.mkdir()
    if subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode:
        return False
    subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
    return True


def launch_read_only(volume: Path, requirements: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """A worker ("reader") on a read-only view of the volume (skips the test where that needs root)."""
    readonly = tmp_path / "ro"
    if not bind_read_only(volume, readonly):
        pytest.skip("a read-only bind mount needs root")
    try:
        return launch(readonly, tmp_path / "reader", requirements, "reader")
    finally:
        subprocess.run(["umount", str(readonly)], check=True)


def test_a_read_only_volume_with_a_published_runtime_still_starts(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "builder", requirements).returncode == 0
    done = launch_read_only(volume, requirements, tmp_path)
    assert "read-only" in done.stderr and "restored from build" in done.stderr
    # The launcher reached the app (whose stand-in then fails to record itself on the read-only volume).
    assert "starting the app" in done.stderr and "Read-only file system" in done.stderr, done.stderr


def test_a_damaged_build_on_a_read_only_volume_is_reported_as_it_is(volume, requirements, tmp_path):
    """Nothing can be moved aside on a read-only volume: the log never says it was, and the launcher stops
    with what to do, after three tries."""
    assert launch(volume, tmp_path / "builder", requirements).returncode == 0
    [key] = key_dirs(volume)
    flip_a_byte(key / max(manifest(key)["parts"], key=lambda name: manifest(key)["parts"][name][0]))
    done = launch_read_only(volume, requirements, tmp_path)
    assert done.returncode != 0
    assert "moved aside as" not in done.stderr and "rebuilding" not in done.stderr, done.stderr
    assert done.stderr.count("nothing was moved aside (the volume cannot be written here)") == 3, done.stderr
    assert "is read-only here, so the damaged build could not be replaced" in done.stderr


def test_volume_mode_says_where_a_warm_runtime_is(volume, requirements, tmp_path):
    assert launch(volume, tmp_path / "first", requirements, TRYON_ENV_MODE="volume").returncode == 0
    again = launch(volume, tmp_path / "second", requirements, TRYON_ENV_MODE="volume")
    assert again.returncode == 0, again.stderr
    assert "already on the volume at" in again.stderr and "local disk" not in again.stderr


def test_a_local_folder_that_cannot_be_written_is_named(volume, requirements, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = subprocess.run(["bash", str(ENTRYPOINT)], env=launcher_env(volume, blocker / "local", requirements),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert f"the local folder {blocker / 'local'} cannot be created or written: set TRYON_LOCAL_DIR" in done.stderr


def test_a_full_local_disk_is_reported_as_such_and_the_archive_kept(volume, requirements, tmp_path):
    make_wheel(volume / "wheels", "2.0", payload_mb=4)
    requirements.write_text("tryon-probe==2.0\n")
    assert launch(volume, tmp_path / "builder", requirements).returncode == 0
    with tmpfs(tmp_path / "small", "size=2m") as small:
        done = launch(volume, small / "local", requirements)
    assert done.returncode != 0
    assert "the local disk has" in done.stderr and "TRYON_LOCAL_DIR" in done.stderr
    assert "failed its check" not in done.stderr
    check_published(volume)  # the healthy archive is untouched


def test_bad_failpoints_are_refused(volume, requirements, tmp_path):
    done = launch(volume, tmp_path / "w", requirements, TRYON_FAILPOINTS="packing=explode")
    assert done.returncode != 0 and "TRYON_FAILPOINTS entry 'packing=explode' is not valid" in done.stderr


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs Debian's faketime (CI installs it)")
def test_a_waiter_whose_clock_runs_fast_does_not_take_over_a_live_build(volume, requirements, tmp_path):
    # A slow builder: uv's install step takes 8 s, with the heartbeat moving all along.
    slow_bin = tmp_path / "slow-bin"
    slow_bin.mkdir()
    real_uv = shutil.which("uv", path=launcher_env(volume, tmp_path, requirements)["PATH"])
    (slow_bin / "uv").write_text(f'#!/bin/sh\n[ "$1" = pip ] && sleep 8\nexec {real_uv} "$@"\n')
    (slow_bin / "uv").chmod(0o755)
    path = f"{slow_bin}:{launcher_env(volume, tmp_path, requirements)['PATH']}"
    builder = Worker(volume, tmp_path / "builder", requirements, PATH=path, TRYON_LOCK_STALE_S="6")
    builder.wait_for("building runtime")
    # The waiter's wall clock runs 60x fast: 6 s of "time" pass between two real heartbeats.
    waiter = subprocess.run(["faketime", "-f", "+0 x60", "bash", str(ENTRYPOINT)], capture_output=True, text=True,
                            timeout=120, env=launcher_env(volume, tmp_path / "waiter", requirements,
                                                          TRYON_LOCK_STALE_S="6"))
    assert builder.finish()[0] == 0, builder.log
    assert waiter.returncode == 0, waiter.stderr
    assert "took over" not in waiter.stderr and "building runtime" not in waiter.stderr


def test_a_waiter_never_counts_more_silence_than_passed(tmp_path):
    """The stale limit is measured from when a waiter last saw the heartbeat move, to the hundredth: a
    lock that was quiet 1.3 s is never judged quiet 2 s because the two readings straddle whole seconds."""
    script = r'''
set -e
. "$1/launcher/lib/lock.sh"
log() { :; }; host_name() { echo here; }
KEY_DIR=$2 BUILD_ID=builder LOCK_STALE_S=2
lock_init
try_lock
BUILD_ID=waiter
# Look first just before a whole second turns, where whole-second readings go wrong.
while read -r up _ < /proc/uptime; [[ ! "$up" =~ \.9[0-4]$ ]]; do sleep 0.005; done
before=$(uptime_cs); watch_lock
sleep 1.3
watch_lock; after=$(uptime_cs)
echo "$WATCH_QUIET $((after - before))"
'''
    done = subprocess.run(["bash", "-c", script, "bash", str(ENTRYPOINT.parents[1]), str(tmp_path / "key")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    quiet, elapsed_cs = map(int, done.stdout.split())
    assert quiet * 100 <= elapsed_cs, (quiet, elapsed_cs)  # whole seconds of silence counted, at most those that passed
    assert elapsed_cs >= 130 and quiet >= 1
