"""``make bench``: every benchmark in turn, one markdown table of figures and ratios to their baselines.

    python bench/run_all.py [--workdir build/bench] [--quick] [--only NAME ...]

The benchmarks share one trained version (``--workdir``). Each prints ``RESULT | what | figure |
baseline | ratio |`` lines; they are gathered into ``results/bench.md`` (with every benchmark's full
output below the table) and, after a full run, into the README between its ``bench:start`` and
``bench:end`` markers. ``--quick`` shortens the soak to 2 minutes. It refuses to start on a busy machine
(bench/quiet.py; ``--allow-busy`` labels every row instead and leaves the README alone) and puts the load
average after each benchmark beside its rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import quiet

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH.parent / "results"
README = BENCH.parent / "README.md"
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
ORDER = ["train", "goodput", "predictor_inprocess", "predictor_http", "e2e_http", "bulk", "batch_fleet",
         "predictor_coldstart", "retrain_served", "alias_move", "dashboard_refresh", "overload", "soak", "scale",
         "scale_predictor", "access", "protected_chain", "refusal_cost", "mlserver", "noisy_neighbour"]
SHARED = {"goodput", "predictor_inprocess", "predictor_http", "e2e_http", "bulk", "batch_fleet", "predictor_coldstart",
          "overload", "soak", "scale", "scale_predictor", "access", "protected_chain", "mlserver", "noisy_neighbour"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(BENCH.parent / "build" / "bench"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=ORDER)
    args = quiet.add_arguments(p).parse_args()
    guard = quiet.require_quiet(args)
    env = {**os.environ, quiet.CHECKED_ENV: str(os.getpid()), **({quiet.ALLOW_ENV: "1"} if args.allow_busy else {})}
    results, outputs = [], []
    for name in args.only or ORDER:
        argv = [sys.executable, str(BENCH / f"{name}.py")]
        if name in SHARED:
            argv += ["--workdir", args.workdir]
        if name == "soak" and args.quick:
            argv += ["--minutes", "2", "--warmup-seconds", "30"]
        if name == "goodput" and args.quick:  # the fleet requests' steps are the long ones
            argv += ["--kinds", "v2,chain,grpc"]
        if name == "scale" and args.quick:  # 20,000 stores take a quarter of an hour on 2 cores
            argv += ["--sizes", "1000,5000"]
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, env=env)
        note = guard.recheck().label()  # the load of the run just done, and any other run that started meanwhile
        text = proc.stdout + (f"\n[exit {proc.returncode}]\n{proc.stderr[-2000:]}" if proc.returncode else "")
        print(text, flush=True)
        outputs.append(f"### {name} ({time.perf_counter() - t0:.0f} s)\n\n```\n{text.strip()}\n```\n")
        results += [f"{line.removeprefix('RESULT ')} {note} |" for line in proc.stdout.splitlines()
                    if line.startswith("RESULT |")]
    table = "\n".join(["| benchmark | figure | baseline (same run) | ratio / goal | machine after the run |",
                       "|---|---:|---:|---:|---|", *results])
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    heading = f"# storecast benchmarks, {stamp}" + (f", {guard.label(why=True)}" if guard.busy else "")
    (RESULTS / "bench.md").write_text(f"{heading}\n\n{table}\n\n" + "\n".join(outputs))
    print(table)
    print(f"\nwritten to {RESULTS / 'bench.md'}")
    if not args.only and not args.quick and not guard.busy:
        update_readme(f"{table}\n\n{stamp}, {platform()}.")
        print(f"and to the table of {README.name}")


def update_readme(block: str) -> None:
    """Replace what stands between the README's markers with ``block``."""
    text = README.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    README.write_text(f"{text[:start]}\n{block}\n{text[end:]}")


def platform() -> str:
    import os

    import psutil

    return f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
