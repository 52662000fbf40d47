"""The benchmarks' quiet-machine guard: no ratio is reported from a busy machine.

``require_quiet(args)`` prints the load average and refuses to go on (exit 3, one line) when another benchmark,
test or load run is going (``pytest``, ``bench/*.py``, ``locust``, ``make test``/``make bench``: any process
outside this one's own tree, found with psutil) or when the 1-minute load average is above
``--load-threshold`` x cores (default 0.5). ``--allow-busy`` (or ``STORECAST_ALLOW_BUSY=1``) runs anyway and
labels every figure and ratio "NOT A QUIET MACHINE". ``bench/run_all.py`` checks once, then sets
``STORECAST_QUIET_CHECKED`` for its benchmarks, which then skip the load threshold (the load of the benchmark
before them is their own) but still look for other runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ALLOW_ENV = "STORECAST_ALLOW_BUSY"
CHECKED_ENV = "STORECAST_QUIET_CHECKED"
THRESHOLD = 0.5  # x cores, on the 1-minute load average
BUSY = "NOT A QUIET MACHINE"


def competitor(cmdline: list[str]) -> str | None:
    """What kind of run a command line is (``pytest``, ``benchmark``, ``locust``, ``make test``), else None."""
    names = [Path(a).name for a in cmdline]
    for i, (arg, name) in enumerate(zip(cmdline, names, strict=True)):
        module = cmdline[i + 1] if arg == "-m" and i + 1 < len(cmdline) else ""
        if name in ("pytest", "py.test") or module == "pytest":
            return "pytest"
        if name == "locust" or module == "locust":
            return "locust"
        if arg.endswith(".py") and Path(arg).parent.name == "bench":
            return f"benchmark {name}"
    if names and names[0] in ("make", "gmake") and {"test", "bench"} & set(cmdline[1:]):
        return f"make {' '.join(a for a in cmdline[1:] if a in ('test', 'bench'))}"
    return None


def competitors() -> list[str]:
    """Other benchmark, test and load runs on this machine: not this process, its ancestors or descendants."""
    import psutil

    me = psutil.Process()
    own = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(recursive=True))}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        info = proc.info
        if info["pid"] in own or not info["cmdline"] or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        kind = competitor(info["cmdline"])
        if kind:
            found.append(f"{kind} (pid {info['pid']})")
    return found


@dataclass
class Quiet:
    """What the guard saw: the load average, other runs, and whether figures are labelled busy."""

    load: tuple[float, float, float]
    cores: int
    threshold: float
    others: list[str] = field(default_factory=list)
    loaded: bool = False  # the 1-minute load average was above threshold x cores at the start

    @property
    def busy(self) -> bool:
        return bool(self.others) or self.loaded

    def why(self) -> str:
        reasons = [*self.others]
        if self.loaded:
            reasons.append(f"1-minute load average {self.load[0]:.2f} > {self.threshold:g} x {self.cores} cores")
        return "; ".join(reasons)

    def label(self, why: bool = False) -> str:
        """The load average now, and the busy label when there is one (``why``: with its reasons): printed
        beside every figure."""
        now = os.getloadavg()
        text = f"load average {now[0]:.2f} / {now[1]:.2f} / {now[2]:.2f} ({self.cores} cores)"
        return text if not self.busy else f"{text}, {BUSY}" + (f" ({self.why()})" if why else "")

    def ratio(self, value: float, goal: str) -> str:
        """A ratio for a RESULT line: with its goal on a quiet machine, else marked and without the goal."""
        return f"{value:.2f} ({goal})" if not self.busy else f"{value:.2f}, {BUSY}"

    def recheck(self) -> Quiet:
        """Look again for other runs (one may have started meanwhile); returns self."""
        for other in competitors():
            if other not in self.others:
                self.others.append(other)
        return self


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--allow-busy", action="store_true", default=os.environ.get(ALLOW_ENV) == "1",
                        help=f"run on a busy machine anyway; every figure is labelled {BUSY!r} "
                        f"(also {ALLOW_ENV}=1)")
    parser.add_argument("--load-threshold", type=float, default=THRESHOLD,
                        help="refuse when the 1-minute load average is above this x cores (default %(default)s)")
    return parser


def require_quiet(args: argparse.Namespace | None = None, *, allow_busy: bool | None = None,
                  threshold: float | None = None) -> Quiet:
    """Check the machine, print the load average; exit 3 with one line when busy unless allowed."""
    allow = allow_busy if allow_busy is not None else bool(getattr(args, "allow_busy", False)) or \
        os.environ.get(ALLOW_ENV) == "1"
    limit = threshold if threshold is not None else getattr(args, "load_threshold", THRESHOLD)
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    quiet = Quiet(load, cores, limit, competitors(), loaded=not os.environ.get(CHECKED_ENV) and load[0] > limit * cores)
    if quiet.busy and not allow:
        print(f"refusing to benchmark, {BUSY}: {quiet.why()} (wait, or pass --allow-busy to label the figures)",
              file=sys.stderr)
        raise SystemExit(3)
    print(f"machine: {quiet.label(why=True)}", flush=True)
    return quiet
