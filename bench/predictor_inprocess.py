"""In process: one store, 7-day window, with intervals: the predictor vs stock ``Prophet.predict``.

    python bench/predictor_inprocess.py [--workdir build/bench] [--stores 20]

Both on the same fitted models of one version (all 1,115 Rossmann stores when the data is there):
stock Prophet from the version's ``prophet_models.zip``, the predictor from its ``params.npz``.
Timed for each of ``--sample`` random stores, the next 7 days after the data:

- stock ``Prophet.predict`` (with intervals, its default);
- the predictor's model call: a V2 request decoded, evaluated and answered (``StorecastModel.predict``);
- the evaluation alone (``Snapshot.outputs``: a lookup in the precomputed horizon), and
  ``predictor.forecast.forecast`` (what dates outside that horizon cost).

Goal: >= 200x stock Prophet. Also prints the largest yhat difference to stock Prophet.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import os
import statistics
import time
import zipfile
from typing import Any

import numpy as np
import pandas as pd
from predictor_common import add_common_arguments, prepare_version

YHAT = ("yhat", "yhat_lower", "yhat_upper")  # the outputs timed


def per_call(fn, calls: int = 300, rounds: int = 7) -> float:
    """Median over rounds of the mean seconds per call."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def time_store(stock: Any, model: Any, snap: Any, sid: str, loop: asyncio.AbstractEventLoop) -> dict[str, float]:
    """Seconds per call of each way to forecast the next 7 days of one store."""
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    from predictor.forecast import forecast

    row = int(snap.table.index(np.array([sid]))[0])
    days = snap.first_day[row] + np.arange(7)
    ds = days.astype("datetime64[D]").astype(str).tolist()
    frame = pd.DataFrame({"ds": pd.to_datetime(ds)})
    parsed = InferenceRequest.model_validate({"inputs": [
        {"name": "store_id", "shape": [7], "datatype": "BYTES", "data": [sid] * 7},
        {"name": "ds", "shape": [7], "datatype": "BYTES", "data": ds}]})
    index = np.full(7, row)
    return {
        "prophet": per_call(lambda: stock.predict(frame), calls=3, rounds=3),
        "model.predict": per_call(lambda: loop.run_until_complete(
            model.predict(InferRequest.from_inference_request(parsed, "storecast")))),
        "Snapshot.outputs": per_call(lambda: snap.outputs([sid] * 7, days, YHAT)),
        "forecast": per_call(lambda: forecast(snap.table, index, days)),
    }


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--sample", type=int, default=20, help="stores timed")
    args = parser.parse_args()
    version = prepare_version(args)
    os.environ["MLFLOW_TRACKING_URI"] = version.tracking_uri
    logging.getLogger("cmdstanpy").disabled = True
    logging.getLogger("prophet").setLevel(logging.WARNING)

    import mlflow.artifacts
    from prophet.serialize import model_from_json

    from predictor.loader import Loader
    from predictor.model import StorecastModel
    from predictor.source import ModelSource

    loader = Loader(ModelSource.parse(version.model_uri), refresh_seconds=0)
    loader.refresh()
    snap = loader.current
    model = StorecastModel("storecast", loader)
    zpath = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/storecast/{snap.version}/artifacts/prophet_models.zip", dst_path=str(version.workdir))
    rng = np.random.default_rng(0)
    sample = rng.choice(snap.table.store_id, size=min(args.sample, len(snap)), replace=False).tolist()
    loop = asyncio.new_event_loop()
    rows: dict[str, list[float]] = {"prophet": [], "model.predict": [], "Snapshot.outputs": [], "forecast": []}
    worst = 0.0
    with zipfile.ZipFile(zpath) as zf:
        for sid in sample:
            stock = model_from_json(gzip.decompress(zf.read(f"{sid}.json.gz")).decode())
            for name, seconds in time_store(stock, model, snap, sid, loop).items():
                rows[name].append(seconds)
            days = snap.first_day[int(snap.table.index(np.array([sid]))[0])] + np.arange(7)
            ref = stock.predict(pd.DataFrame({"ds": pd.to_datetime(days.astype("datetime64[D]"))}))["yhat"].to_numpy()
            worst = max(worst, float(np.max(np.abs(snap.outputs([sid] * 7, days, YHAT)["yhat"] - ref) / np.abs(ref))))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"data: {version.data}; version {snap.version}, {len(snap)} stores; {len(sample)} stores timed, "
          "next 7 days, with intervals (median per call)")
    print(f"stock Prophet.predict           {med['prophet'] * 1e3:9.2f} ms")
    for name in ("model.predict", "Snapshot.outputs", "forecast"):
        label = {"model.predict": "predictor model.predict (V2)", "Snapshot.outputs": "  evaluation (horizon lookup)",
                 "forecast": "  forecast() (outside horizon)"}[name]
        print(f"{label:31s} {med[name] * 1e6:9.1f} us   {med['prophet'] / med[name]:8.0f}x")
    ratio = med["prophet"] / med["model.predict"]
    print(f"speed-up of the model call: {ratio:.0f}x (goal >= 200x) {'OK' if ratio >= 200 else 'MISSED'}; "
          f"largest relative yhat difference to stock Prophet: {worst:.1e}")
    print(f"RESULT | predictor in process, one store, 7 days, with intervals | {med['model.predict'] * 1e6:.0f} us | "
          f"stock Prophet.predict {med['prophet'] * 1e3:.1f} ms | {ratio:.0f}x |")
    if "holdout_coverage" in version.summary:
        print(f"holdout interval coverage of this version (training run): {version.summary['holdout_coverage']:.3f} "
              "at 95 %")


if __name__ == "__main__":
    main()
