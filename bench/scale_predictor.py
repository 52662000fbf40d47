"""The predictor at scale (issue 16): cold start and resident memory with 1k, 5k and 20k stores.

    python bench/scale_predictor.py [--workdir build/bench] [--sizes 1000,5000,20000] [--repeat 3]

The table of N stores is made by replicating fitted rows (the Rossmann version ``bench/scale.py``
left in ``--workdir``, else 40 synthetic stores fitted here) under new store ids, saved as the
``artifacts/params.npz`` of a local folder laid out as a downloaded version, and served by
``python -m predictor --model_uri <folder>`` (default flags: the next 366 days of every store are
precomputed after the model is ready). Per size, median of ``--repeat`` starts: process start to
model-ready, to the precomputed horizon, and the resident memory (PSS of the process tree) after
that and a few requests. Goals: memory per store flat, cold start under 5 s at 20k. From the
growth per store it says from what size a shard is the answer (the predictor's 2 GiB limit in
manifests/base, and the 5 s cold start).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from predictor_common import PREDICTOR, start
from scale_common import REPO, median, tree_pss

sys.path.insert(0, str(REPO))

from predictor.table import PER_STORE, ParamTable

LIMIT_MB = 2048  # the predictor's memory limit in manifests/base/inferenceservice.yaml
COLD_START_GOAL = 5.0


def source_table(workdir: Path) -> tuple[ParamTable, str]:
    """Fitted rows to replicate: the Rossmann version of bench/scale.py, else a few synthetic stores."""
    info = workdir / "scale-rossmann.json"
    if info.exists():
        from pipelines.versions.registry import download

        meta = json.loads(info.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            path = download(f"models:/storecast/{meta['version']}", tmp, "params.npz", uri=meta["tracking_uri"])
            return ParamTable.load(path), f"{meta['data']} version {meta['version']}"
    from pipelines.data.sales_csv import read_sales, write_sales
    from pipelines.data.synth import synthesize
    from pipelines.training.fitting import FitConfig
    from pipelines.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        sales = read_sales(write_sales(synthesize(40, seed=1, start="2014-08-01"), Path(tmp) / "sales.csv"))
    result = train(sales, FitConfig(), progress=False)
    return result.table, "40 synthetic stores fitted here (run bench/scale.py first for Rossmann rows)"


def replicate(table: ParamTable, n: int) -> ParamTable:
    """``n`` stores: the table's rows over and over, under the ids 000001..n (sorted as strings)."""
    rows = np.arange(n) % len(table)
    width = len(str(n))
    fields = {name: getattr(table, name)[rows] for name in PER_STORE}
    fields["store_id"] = np.array([f"{i:0{width}d}" for i in range(1, n + 1)])
    return dataclasses.replace(table, **fields)


def _touch(url: str, store: str) -> None:
    body = {"inputs": [{"name": "store_id", "shape": [7], "datatype": "BYTES", "data": [store] * 7},
                       {"name": "ds", "shape": [7], "datatype": "BYTES",
                        "data": [f"2015-08-0{d}" for d in range(1, 8)]}]}
    req = urllib.request.Request(f"{url}/v2/models/storecast/infer", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    for _ in range(10):
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()


def measure(folder: Path, log: Path, store: str) -> tuple[float, float, float]:
    """(seconds to ready, seconds to the precomputed horizon, MB resident after)."""
    server = start(PREDICTOR, log, extra=["--model_uri", str(folder)])
    try:
        ready = server.wait_ready(timeout=300)
        deadline = time.monotonic() + 300
        while "precomputed the next" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"no precomputed horizon; see {log}")
            time.sleep(0.05)
        horizon = time.perf_counter() - server.started
        _touch(server.url, store)
        return ready, horizon, tree_pss(server.proc.pid) / 2**20
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(REPO / "build" / "bench"))
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    table, label = source_table(workdir)
    print(f"rows replicated from {label} ({len(table)} stores)", flush=True)
    res: dict[int, dict[str, float]] = {}
    for n in sizes:
        folder = workdir / "predictor-scale" / str(n)
        path = replicate(table, n).save(folder / "artifacts" / "params.npz")
        runs = [measure(folder, workdir / "predictor-scale" / f"{n}.log", f"{1:0{len(str(n))}d}")
                for _ in range(args.repeat)]
        res[n] = {"ready": median([r[0] for r in runs]), "horizon": median([r[1] for r in runs]),
                  "mb": median([r[2] for r in runs]), "file_mb": path.stat().st_size / 2**20}
        m = res[n]
        print(f"{n:6d} stores: params.npz {m['file_mb']:6.1f} MB, ready in {m['ready']:.2f} s, horizon precomputed "
              f"at {m['horizon']:.2f} s, resident {m['mb']:.0f} MB ({1024 * m['mb'] / n:.1f} KB/store)", flush=True)

    print(f"\npredictor, --model_uri <local folder>, default flags, median of {args.repeat}:")
    print("| stores | params.npz | ready | 366 days precomputed | resident (PSS) | KB / store | KB / store added |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    growth, prev = [], None
    for n, m in res.items():
        added = ""
        if prev is not None:
            growth.append((m["mb"] - res[prev]["mb"]) * 1024 / (n - prev))
            added = f"{growth[-1]:.1f} (from {prev})"
        print(f"| {n} | {m['file_mb']:.1f} MB | {m['ready']:.2f} s | {m['horizon']:.2f} s | {m['mb']:.0f} MB | "
              f"{1024 * m['mb'] / n:.1f} | {added} |")
        prev = n
    big, small = sizes[-1], sizes[0]
    ok = res[big]["ready"] < COLD_START_GOAL
    print(f"cold start at {big}: {res[big]['ready']:.2f} s to ready (goal < {COLD_START_GOAL:.0f} s) "
          f"{'OK' if ok else 'MISSED'}; {res[big]['horizon']:.2f} s until the horizon is precomputed")
    label = " / ".join(f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in res)
    shard = ""
    if len(sizes) > 1:
        per_mb = (res[big]["mb"] - res[small]["mb"]) / (big - small)  # MB per store
        fixed = res[small]["mb"] - per_mb * small
        per_s = max((res[big]["ready"] - res[small]["ready"]) / (big - small), 1e-9)
        fixed_s = res[small]["ready"] - per_s * small
        by_mem = int((0.8 * LIMIT_MB - fixed) / per_mb) if per_mb > 0 else 10**9
        by_start = int((COLD_START_GOAL - fixed_s) / per_s)
        shard = f"shard above ~{min(by_mem, by_start) // 1000 * 1000} stores per replica"
        print(f"a replica holds ~{fixed:.0f} MB + {1024 * per_mb:.1f} KB per store: 80% of its {LIMIT_MB} MB limit "
              f"at ~{by_mem} stores; cold start {fixed_s:.2f} s + {1000 * per_s:.3f} ms per store: "
              f"{COLD_START_GOAL:.0f} s at ~{by_start} stores -> {shard} (manifests/overlays/sharded, --shard K/N)")
        spread = max(growth) / min(growth) if len(growth) > 1 and min(growth) > 0 else 1.0
        print(f"RESULT | predictor resident memory, {label} stores | "
              + " / ".join(f"{m['mb']:.0f}" for m in res.values())
              + f" MB; added per store {' / '.join(f'{g:.1f}' for g in growth)} KB | {res[small]['mb']:.0f} MB at "
              f"{small} | added {spread:.2f}x (goal flat); {shard} |")
    print(f"RESULT | predictor cold start to ready, {label} stores | "
          + " / ".join(f"{m['ready']:.2f}" for m in res.values())
          + f" s (366-day horizon precomputed at {res[big]['horizon']:.1f} s for {big}) | "
          f"{res[small]['ready']:.2f} s at {small} | goal < 5 s at {big}: {'OK' if ok else 'MISSED'} |")


if __name__ == "__main__":
    main()
