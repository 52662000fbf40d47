"""Training at scale (issue 16): the Ray backend against the local one, and the cost per store at 1k-20k stores.

    python bench/scale.py [--workdir build/bench] [--sizes 1000,5000,20000] [--history-start 2015-03-01]
                          [--repeat 1] [--workers N]

1. The real Rossmann data (1,115 stores; 1,115 synthetic stores with the same history when it is
   absent): ``storecast train`` end to end with ``--backend local`` and ``--backend ray`` (a local
   Ray started by the run) on the same cores, alternately; wall time, fit phase and peak memory
   (PSS of the whole process tree: driver, pool workers or raylet, GCS and Ray workers).
   Goal: Ray <= 1.2x local.
2. Synthetic stores at each ``--sizes`` with a shorter history (``--history-start`` to 2015-07-31,
   so that 20,000 stores fit in minutes on 2 cores; the same history at every size), local backend:
   seconds per store and peak memory per store. Goal: within 1.3x from the smallest to the largest.
   Memory per store is given as peak / N and as the growth per store between sizes (peak / N at 1k
   is mostly the fixed processes: Python, Prophet, MLflow, one per worker).
The Rossmann version trained by the local run is kept in ``--workdir`` for ``bench/scale_predictor.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from scale_common import REPO, Run, median, train_run

sys.path.insert(0, str(REPO))

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from tests.support import shared_rossmann

END = "2015-07-31"


def backends(data: Path, workdir: Path, workers: int, repeat: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {"local": [], "ray": []}
    for i in range(repeat):
        for backend in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
            run = train_run(data, workdir / f"rossmann-{backend}-{i}", backend, workers)
            runs[backend].append(run)
            print(f"run {i + 1}: {backend:5s} {run.wall:6.1f} s wall, fit {run.fit:6.1f} s, register "
                  f"{run.register:4.1f} s, {run.cpu:6.1f} CPU s, peak {run.peak_mb:6.0f} MB, {run.stores} stores",
                  flush=True)
    return runs


def scale(sizes: list[int], start: str, workdir: Path, workers: int, extra: tuple[str, ...] = ()) -> dict[int, Run]:
    out = {}
    for n in sizes:
        data = workdir / "scale-data" / f"synthetic-{n}-{start}.csv.gz"
        if not data.exists():
            data.parent.mkdir(parents=True, exist_ok=True)
            write_sales(synthesize(n, seed=1, start=start, end=END), data)
        out[n] = run = train_run(data, workdir / f"scale-{n}", "local", workers, extra)
        print(f"{n:6d} stores: {run.wall:7.1f} s wall ({1000 * run.wall / n:5.1f} ms/store), {run.cpu:7.0f} CPU s "
              f"({1000 * run.cpu / n:5.1f} ms/store), fit {run.fit:7.1f} s, "
              f"register {run.register:5.1f} s, peak {run.peak_mb:7.0f} MB ({1024 * run.peak_mb / n:6.1f} KB/store)"
              f"{f', {run.failed} skipped' if run.failed else ''}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(REPO / "build" / "bench"))
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--history-start", default="2015-03-01", help="first day of the synthetic history (to 2015-07-31)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each backend on Rossmann (median)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-rossmann", action="store_true")
    p.add_argument("--scale-train-args", default="", help="extra storecast train flags for the synthetic sizes, "
                   "e.g. '--model seed' (a cheaper model, to fit 20,000 stores in the time on a busy machine)")
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    if not args.skip_rossmann:
        data = shared_rossmann()
        label = "Rossmann"
        if data is None:
            data, label = workdir / "scale-data" / "synthetic-1115-full.csv.gz", "synthetic (no Rossmann data)"
            if not data.exists():
                data.parent.mkdir(parents=True, exist_ok=True)
                write_sales(synthesize(1115, seed=1, end=END), data)
        runs = backends(data, workdir, args.workers, args.repeat)
        (workdir / "scale-rossmann.json").write_text(json.dumps({
            "tracking_uri": f"sqlite:///{workdir / 'rossmann-local-0' / 'mlflow.db'}",
            "version": runs["local"][0].version, "data": label}))
        loc, ray = ({k: median([getattr(r, k) for r in runs[b]]) for k in ("wall", "fit", "peak_mb", "cpu")}
                    for b in ("local", "ray"))
        best = {b: min(r.wall for r in runs[b]) for b in runs}  # least disturbed by other load on the machine
        n = runs["local"][0].stores
        ratio = ray["wall"] / loc["wall"]
        print(f"\n{label}, {n} stores, {args.workers} CPUs (median of {args.repeat}):")
        print("| backend | wall | fit phase | CPU seconds (process tree) | peak memory (PSS, process tree) |\n"
              "|---|---:|---:|---:|---:|")
        for name, m in (("local (process pool)", loc), ("ray (local Ray, started by the run)", ray)):
            print(f"| {name} | {m['wall']:.1f} s | {m['fit']:.1f} s | {m['cpu']:.0f} s | {m['peak_mb']:.0f} MB |")
        cpu_ratio = ray["cpu"] / loc["cpu"]
        print(f"Ray / local CPU seconds {cpu_ratio:.2f}x: the cost on the same cores, whatever else runs")
        print(f"Ray / local wall {ratio:.2f}x (goal <= 1.2x) {'OK' if ratio <= 1.2 else 'MISSED'}; best of "
              f"{args.repeat}: {best['ray']:.1f} / {best['local']:.1f} s = {best['ray'] / best['local']:.2f}x; "
              f"fit phase {ray['fit'] / loc['fit']:.2f}x; memory {ray['peak_mb'] / loc['peak_mb']:.2f}x\n")
        print(f"RESULT | training {n} {label} stores, Ray backend vs local processes ({args.workers} CPUs) | "
              f"{ray['wall']:.1f} s, {ray['peak_mb']:.0f} MB peak | local {loc['wall']:.1f} s, "
              f"{loc['peak_mb']:.0f} MB | wall {ratio:.2f}x median, {best['ray'] / best['local']:.2f}x best of "
              f"{args.repeat}; CPU {cpu_ratio:.2f}x (goal <= 1.2x) |")

    if not sizes:
        return
    extra = tuple(shlex.split(args.scale_train_args))
    res = scale(sizes, args.history_start, workdir, args.workers, extra)
    per_store = {n: r.wall / n for n, r in res.items()}
    spread = max(per_store.values()) / min(per_store.values())
    cpu_store = {n: r.cpu / n for n, r in res.items()}
    cpu_spread = max(cpu_store.values()) / min(cpu_store.values())
    print(f"\nsynthetic stores, history {args.history_start}..{END}, local backend, {args.workers} CPUs"
          f"{', storecast train ' + args.scale_train_args if extra else ''}:")
    print("| stores | wall | ms / store | CPU ms / store | peak memory | KB / store (peak / N) | KB / store added |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    prev = None
    growth = []
    for n, r in res.items():
        added = ""
        if prev is not None:
            g = (r.peak_mb - prev[1]) * 1024 / (n - prev[0])
            growth.append(g)
            added = f"{g:.1f} (from {prev[0]})"
        print(f"| {n} | {r.wall:.1f} s | {1000 * per_store[n]:.1f} | {1000 * cpu_store[n]:.1f} | {r.peak_mb:.0f} MB | "
              f"{1024 * r.peak_mb / n:.1f} | {added} |")
        prev = (n, r.peak_mb)
    verdict = "OK" if spread <= 1.3 else "MISSED"
    print(f"seconds per store: {spread:.2f}x from smallest to largest (goal <= 1.3x) {verdict}; "
          f"CPU seconds per store {cpu_spread:.2f}x")
    label = " / ".join(f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in res)
    how = f"{args.history_start}..{END}" + (f", {args.scale_train_args}" if extra else "")
    print(f"RESULT | training, synthetic {label} stores ({how}): ms per store | "
          + " / ".join(f"{1000 * v:.1f}" for v in per_store.values())
          + " ms wall, " + " / ".join(f"{1000 * v:.1f}" for v in cpu_store.values())
          + f" ms CPU | smallest {1000 * min(per_store.values()):.1f} ms | wall {spread:.2f}x, CPU {cpu_spread:.2f}x "
          "(goal <= 1.3x) |")
    if growth:
        g_spread = max(growth) / min(growth) if min(growth) > 0 else float("inf")
        mem_ratio = (res[sizes[-1]].peak_mb / sizes[-1]) / (res[sizes[0]].peak_mb / sizes[0])
        print(f"memory: peak / N from {sizes[0]} to {sizes[-1]}: {mem_ratio:.2f}x (falls: fixed processes); "
              f"growth per store between sizes {' / '.join(f'{g:.1f}' for g in growth)} KB ({g_spread:.2f}x)")
        print(f"RESULT | training peak memory per store, synthetic {label} | "
              + " / ".join(f"{1024 * r.peak_mb / n:.0f}" for n, r in res.items())
              + f" KB (peak / N); added per store {' / '.join(f'{g:.0f}' for g in growth)} KB | "
              f"peak {res[sizes[0]].peak_mb:.0f} MB at {sizes[0]}, {res[sizes[-1]].peak_mb:.0f} MB at {sizes[-1]} | "
              f"peak/N {mem_ratio:.2f}x, added {g_spread:.2f}x (goal <= 1.3x) |")


if __name__ == "__main__":
    main()
