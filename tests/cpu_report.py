"""Where the suite's CPU goes: with TEST_CPU_REPORT=FILE, each test appends one JSON line to FILE with its
wall seconds and the CPU seconds of the test process and the children it reaped (servers, browsers,
launchers); `python -m tests.cpu_report FILE` sums them per module. A process reaped at a module's end
(a module's server) counts toward that module's last test; one kept for the whole worker (the studio's
server, the browser) toward the worker's last test. Works with pytest-xdist (one
line per test from every worker; appends of one short line do not interleave)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict

import pytest

REPORT = os.environ.get("TEST_CPU_REPORT")


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if REPORT:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        cpu, wall = _cpu(), time.monotonic()
        yield
        line = json.dumps({"test": item.nodeid, "cpu_s": round(_cpu() - cpu, 2),
                           "wall_s": round(time.monotonic() - wall, 2)})
        with open(REPORT, "a") as report:
            report.write(line + "\n")


def summary(path: str, top: int = 25) -> str:
    modules: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    with open(path) as report:
        for line in report:
            row = json.loads(line)
            total = modules[row["test"].split("::")[0]]
            total[0] += row["cpu_s"]
            total[1] += row["wall_s"]
            total[2] += 1
    lines = [f"{'cpu s':>8} {'wall s':>8} {'tests':>5}  module"]
    for module, (cpu, wall, count) in sorted(modules.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{cpu:8.1f} {wall:8.1f} {count:5d}  {module}")
    cpu, wall, count = (sum(v[i] for v in modules.values()) for i in range(3))
    lines.append(f"{cpu:8.1f} {wall:8.1f} {count:5d}  all")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
