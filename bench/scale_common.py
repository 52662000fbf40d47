"""Shared by the scale benchmarks: peak memory of a process tree, one ``storecast train`` run, medians.

Memory is the proportional set size (PSS, ``/proc/PID/smaps_rollup``) summed over the process and
all its descendants, sampled every 0.2 s: shared pages (libraries, Ray's shared-memory object
store, copy-on-write pages of forked workers) count once, so local and Ray runs compare fairly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
STORECAST = str(Path(sys.executable).parent / "storecast")


def pss_bytes(pid: int) -> int:
    """PSS of one process (its RSS where smaps_rollup cannot be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_pss(pid: int) -> int:
    return sum(pss_bytes(p.pid) for p in tree(pid))


class PeakSampler:
    """The highest summed PSS of a process tree while it runs, and the CPU seconds it used.

    CPU: user + system time of every process of the tree, as last seen (a process that ends between
    two samples loses at most ``interval``). On a machine shared with other work, CPU seconds are
    what a run costs on the same cores; wall time also holds the waits for the other work.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self.cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            procs = tree(self.pid)
            self.peak = max(self.peak, sum(pss_bytes(p.pid) for p in procs))
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.cpu[(p.pid, p.create_time())] = t.user + t.system
                except psutil.Error:
                    continue

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Run:
    """One ``storecast train --json`` run."""

    wall: float  # process start to exit
    fit: float  # the fit phase as the CLI reports it (data prepared -> every result gathered)
    register: float
    peak_mb: float  # summed PSS of the process tree
    cpu: float  # CPU seconds of the process tree
    stores: int
    failed: int
    version: str


def train_run(data: Path, workdir: Path, backend: str, workers: int, extra: tuple[str, ...] = ()) -> Run:
    """``storecast train`` into a fresh sqlite registry in ``workdir``, measured."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [STORECAST, "train", "--data", str(data), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--json", "--no-progress", "--alias", "", "--workers", str(workers), "--backend", backend, *extra]
    log = (workdir / "train.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=log, text=True)
    sampler = PeakSampler(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    log.close()
    if proc.returncode:
        tail = (workdir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"storecast train ({backend}) failed with {proc.returncode}:\n{tail}")
    res = json.loads(out.strip().splitlines()[-1])
    return Run(wall, res["seconds"]["fit"], res["seconds"].get("register", 0.0), peak / 2**20, sampler.cpu_seconds,
               res["stores"], len(res["failed"]), res["version"])


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
