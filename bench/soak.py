"""Soak: 10 minutes at 70% of saturation; does any server process grow?

    python bench/soak.py [--workdir build/bench] [--minutes 10]

On the local chain (transformer -> predictor, gRPC V2): a short closed-loop run finds the saturation
throughput S; an open-loop generator then offers 0.7 S business requests per second for
``--minutes``, while the resident memory of each server process is sampled every 5 s. Growth is
measured from the end of the warm-up (the first minute) to the end. Goal: <= 10% per process.
Writes ``results/soak.png`` (RSS over time).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path

import loadgen
from overload import PATH, Chain
from predictor_common import REPO, add_common_arguments, prepare_version


def sample(chain: Chain, stop: threading.Event, out: list[tuple[float, float, float]], every: float = 5.0) -> None:
    t0 = time.perf_counter()
    while not stop.wait(every):
        out.append((time.perf_counter() - t0, chain.pred.rss_mb(), chain.front.rss_mb()))


def plot(points: list[tuple[float, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], label="predictor RSS")
    ax.plot([p[0] for p in points], [p[2] for p in points], label="transformer RSS")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("storecast soak: resident memory at 70% of saturation")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=60.0)
    args = p.parse_args()
    version = prepare_version(args)
    stores = [str(s) for s in range(1, (version.stores if version.stores > 0 else 1115) + 1)]
    rng = random.Random(0)
    requests = [loadgen.post(PATH, {"instances": [{"storeId": rng.choice(stores)}]}) for _ in range(2000)]
    chain = Chain(version, "soak", 64)
    points: list[tuple[float, float, float]] = []
    try:
        best = loadgen.closed(chain.front.http_port, requests, 16, 2, 10).row()["rps"]
        rate = 0.7 * best
        print(f"saturation {best:.0f} req/s; soaking at {rate:.0f} req/s for {args.minutes:g} min", flush=True)
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(chain, stop, points), daemon=True)
        sampler.start()
        row = loadgen.open_loop(chain.front.http_port, requests, rate, 0, args.minutes * 60, timeout=5).row()
        stop.set()
        sampler.join()
    finally:
        chain.stop()
    warm = next(p for p in points if p[0] >= args.warmup_seconds)
    end = points[-1]
    growth = {"predictor": end[1] / warm[1] - 1, "transformer": end[2] / warm[2] - 1}
    plot(points, REPO / "results" / "soak.png")
    print(f"served {row['rps']:.1f} req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, shed "
          f"{row['shed_rps']:.2f}/s, timeouts {row['timeouts']}, failed {row['failed']}")
    for name, i in (("predictor", 1), ("transformer", 2)):
        print(f"{name:11s} RSS {warm[i]:.0f} MB after warm-up -> {end[i]:.0f} MB at the end: {growth[name]:+.1%} "
              f"(goal <= +10%)")
    print(f"RESULT | soak, {args.minutes:g} min at 70% of saturation ({rate:.0f} req/s) | RSS growth predictor "
          f"{growth['predictor']:+.1%}, transformer {growth['transformer']:+.1%}; p99 {row['p99_ms']:.0f} ms, "
          f"{row['timeouts']} timeouts | after warm-up | goal <= +10% |")


if __name__ == "__main__":
    main()
