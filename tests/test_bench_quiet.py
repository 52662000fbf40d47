"""The benchmarks' quiet-machine guard (bench/quiet.py): it finds a real competing test run outside its own
process tree, refuses to report on a busy or loaded machine, and labels figures when told to go on anyway."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support import REPO, wait_until

SPEC = importlib.util.spec_from_file_location("bench_quiet", REPO / "bench" / "quiet.py")
quiet = sys.modules["bench_quiet"] = importlib.util.module_from_spec(SPEC)  # a script folder, not a package
SPEC.loader.exec_module(quiet)
SLEEP = "import time; time.sleep(60)"
# starts SLEEP named like a pytest run in its own session and exits: the sleeper is no descendant of the test
DETACHED = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1], "-m", "pytest", "tests/"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(p.pid)
"""


@pytest.fixture
def detached_pytest() -> Iterator[int]:
    """A process outside this test's tree whose command line is ``python ... -m pytest tests/``."""
    out = subprocess.run([sys.executable, "-c", DETACHED, SLEEP], capture_output=True, text=True, timeout=60,
                         check=True)
    pid = int(out.stdout.strip())
    proc = psutil.Process(pid)
    try:
        yield pid
    finally:
        try:
            proc.kill()
            proc.wait(10)
        except psutil.Error:  # gone already (killed by the test, and reaped)
            pass


def found(pid: int) -> bool:
    return any(other.endswith(f"(pid {pid})") for other in quiet.competitors())


def test_command_lines_are_told_apart() -> None:
    kinds = {("/venv/bin/python", "-m", "pytest", "-q"): "pytest", (".venv/bin/pytest", "tests/x.py"): "pytest",
             ("python", "/repo/bench/soak.py", "--minutes", "2"): "benchmark soak.py",
             ("python", "-m", "locust", "-f", "loadtest/locustfile.py"): "locust",
             ("/venv/bin/locust", "--headless"): "locust", ("make", "-j2", "test"): "make test",
             ("python", "-m", "predictor"): None, ("python", "loadtest/report.py"): None,
             ("vim", "bench.md"): None, ("make", "demo"): None}
    assert {k: quiet.competitor(list(k)) for k in kinds} == kinds


def test_finds_a_pytest_run_outside_its_own_tree_until_it_ends(detached_pytest: int) -> None:
    assert wait_until(lambda: found(detached_pytest), 10), quiet.competitors()
    psutil.Process(detached_pytest).kill()
    assert wait_until(lambda: not found(detached_pytest), 10)


def test_its_own_children_and_the_pytest_running_it_are_no_competitors() -> None:
    child = subprocess.Popen([sys.executable, "-c", SLEEP, "-m", "pytest"])
    try:
        time.sleep(0.2)
        others = quiet.competitors()
        assert not any(o.endswith(f"(pid {child.pid})") for o in others)
        assert not any(o.endswith(f"(pid {p.pid})") for p in psutil.Process().parents() for o in others)
    finally:
        child.kill()
        child.wait()


def test_refuses_a_busy_machine_in_one_line_or_labels_every_figure(detached_pytest: int, capsys,
                                                                   monkeypatch) -> None:
    monkeypatch.delenv(quiet.ALLOW_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        quiet.require_quiet(allow_busy=False)
    assert exit_.value.code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and quiet.BUSY in err and f"pytest (pid {detached_pytest})" in err
    guard = quiet.require_quiet(allow_busy=True)
    assert guard.busy and quiet.BUSY in guard.label() and "load average" in guard.label()
    assert quiet.BUSY in guard.ratio(0.85, "goal >= 0.8") and "goal" not in guard.ratio(0.85, "goal >= 0.8")


def test_load_average_threshold_and_a_quiet_machine(monkeypatch, capsys) -> None:
    monkeypatch.setattr(quiet, "competitors", list)  # nothing else running (the machine may be shared meanwhile)
    monkeypatch.delenv(quiet.CHECKED_ENV, raising=False)
    monkeypatch.setattr(quiet.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(quiet.os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    with pytest.raises(SystemExit):
        quiet.require_quiet(allow_busy=False)
    assert "1-minute load average 1.50 > 0.5 x 2 cores" in capsys.readouterr().err
    assert not quiet.require_quiet(allow_busy=False, threshold=1.0).busy
    monkeypatch.setenv(quiet.CHECKED_ENV, "1")  # under bench/run_all.py: the load is the benchmarks' own
    assert not quiet.require_quiet(allow_busy=False).busy
    monkeypatch.setattr(quiet.os, "getloadavg", lambda: (0.2, 0.3, 0.4))
    monkeypatch.delenv(quiet.CHECKED_ENV)
    guard = quiet.require_quiet(allow_busy=False)
    assert "machine: load average 0.20 / 0.30 / 0.40 (2 cores)" in capsys.readouterr().out
    assert guard.ratio(0.85, "goal >= 0.8") == "0.85 (goal >= 0.8)" and quiet.BUSY not in guard.label()
