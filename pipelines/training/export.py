"""From a fitted stock Prophet model to the predictor's compact row (and back to stock JSON)."""

from __future__ import annotations

import gzip
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.training.intervals import simulate_offsets

if TYPE_CHECKING:  # Prophet is imported where a model is serialised: `storecast export` never imports it
    from prophet import Prophet


class UnsupportedModelError(ValueError):
    """The model uses a Prophet feature the numpy predictor does not evaluate."""


def check_supported(model: Prophet) -> None:
    """Linear or flat growth, additive unconditional seasonalities and regressors, MAP fit; nothing else."""
    problems = []
    if model.growth not in ("linear", "flat"):
        problems.append(f"growth={model.growth!r}")
    if model.holidays is not None or model.country_holidays:
        problems.append("holidays (give them as calendar regressors)")
    for name, props in model.extra_regressors.items():
        if props["mode"] != "additive":
            problems.append(f"regressor {name!r} ({props['mode']})")
    for name, s in model.seasonalities.items():
        if s["mode"] != "additive" or s["condition_name"] is not None:
            problems.append(f"seasonality {name!r} ({s['mode']}, condition={s['condition_name']})")
    if model.params["k"].shape[0] != 1:
        problems.append("MCMC samples (only MAP fits)")
    if problems:
        raise UnsupportedModelError("unsupported Prophet features: " + ", ".join(problems))


def fourier_layout(model: Prophet) -> list[tuple[float, int, bool]]:
    """(period, harmonic, is_cos) of each beta column, in Prophet's feature order."""
    layout = []
    for s in model.seasonalities.values():
        for i in range(s["fourier_order"]):
            layout += [(float(s["period"]), i + 1, False), (float(s["period"]), i + 1, True)]
    return layout


def store_row(model: Prophet, store_id: str, seed: int, grid: np.ndarray) -> dict[str, Any]:
    """The compact parameters of one fitted model, with its seeded interval offsets."""
    check_supported(model)
    p = model.params
    flat = model.growth == "flat"
    start = (model.start - np.datetime64("1970-01-01")).total_seconds()
    t_scale = model.t_scale.total_seconds()
    delta = np.zeros(0) if flat else np.asarray(p["delta"][0], dtype=np.float64)
    layout = fourier_layout(model)
    beta = np.asarray(p["beta"][0], dtype=np.float64)
    names = list(model.extra_regressors)
    # Prophet standardises a regressor (x - mu) / std; fold that into the coefficient and the offset m
    mu = np.array([float(model.extra_regressors[n]["mu"]) for n in names])
    std = np.array([float(model.extra_regressors[n]["std"]) for n in names])
    reg_beta = beta[len(layout): len(layout) + len(names)] / std if names else np.zeros(0)
    m_shift = -float((reg_beta * mu).sum()) if names else 0.0
    cp_t = np.zeros(0) if flat else np.asarray(model.changepoints_t, dtype=np.float64)
    floor = float(model.y_min) if model.scaling == "minmax" else 0.0
    rng = np.random.default_rng([seed, zlib.crc32(str(store_id).encode())])
    offsets = simulate_offsets(
        t_scale=t_scale, delta=delta, sigma_obs=float(p["sigma_obs"][0, 0]), y_scale=float(model.y_scale),
        samples=int(model.uncertainty_samples or 0), interval_width=float(model.interval_width), flat=flat,
        grid=grid, rng=rng,
    )
    return {
        "store_id": str(store_id),
        "start": start,
        "t_scale": t_scale,
        "y_scale": float(model.y_scale),
        "floor": floor,
        "k": 0.0 if flat else float(p["k"][0, 0]),
        "m": float(p["m"][0, 0]) + m_shift,
        "sigma_obs": float(p["sigma_obs"][0, 0]),
        "delta": delta,
        "cp_t": cp_t,
        "beta": beta[: len(layout)],
        "features": layout,
        "regressors": names,
        "reg_beta": reg_beta,
        "last_day": round((start + t_scale) / 86400.0),
        **offsets,
    }


def prophet_json_gz(model: Prophet) -> bytes:
    """The stock ``model_to_json`` of a model, gzip-compressed (reproducible bytes)."""
    from prophet.serialize import model_to_json

    return gzip.compress(model_to_json(model).encode(), compresslevel=1, mtime=0)


def future_frame(table: Any, store_id: str, days: np.ndarray) -> Any:
    """The exact frame stock ``Prophet.predict`` needs for one store on ``days``: ``ds`` and every regressor."""
    import pandas as pd

    from predictor.forecast import regressor_matrix

    rows = np.full(len(days), int(table.index(np.array([store_id]))[0]))
    frame = pd.DataFrame({"ds": pd.to_datetime(np.asarray(days, dtype=np.int64), unit="D")})
    x = regressor_matrix(table, rows, days)
    for j, name in enumerate(table.reg_names.tolist()):
        frame[name] = x[:, j]
    return frame


def export_window(table: Any, model_json: str, store_id: str, days: np.ndarray, out: Any) -> dict[str, str]:
    """Write a store's stock model, its future frame for ``days`` and the served numbers into folder ``out``.

    Reproduce: ``model_from_json(<store>.json).predict(<store>_future.csv)``; a ``log1p`` version serves
    ``expm1`` of Prophet's ``yhat`` (see ``<store>_export.json``), which equals ``<store>_served.csv``.
    """
    import json
    from pathlib import Path

    from predictor.forecast import calendar_days, forecast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = np.full(len(days), int(table.index(np.array([store_id]))[0]))
    frame = future_frame(table, store_id, days)
    yhat, lower, upper = forecast(table, rows, days)
    resolved = calendar_days(table, rows, days)
    served = frame[["ds"]].assign(yhat=yhat, yhat_lower=lower, yhat_upper=upper, open=resolved.open.astype(int),
                                  promo=resolved.promo.astype(int), in_calendar=resolved.known.astype(int))
    paths = {"model": out / f"{store_id}.json", "future": out / f"{store_id}_future.csv",
             "served": out / f"{store_id}_served.csv", "about": out / f"{store_id}_export.json"}
    paths["model"].write_text(model_json)
    frame.to_csv(paths["future"], index=False, date_format="%Y-%m-%d")
    served.to_csv(paths["served"], index=False, date_format="%Y-%m-%d")
    i = int(rows[0]) if len(rows) else 0
    paths["about"].write_text(json.dumps({
        "store_id": store_id, "transform": table.transform, "regressors": table.reg_names.tolist(),
        "interval_calibration": float(table.iv_scale[i]) if len(table) else 1.0,
        "reproduce": ("yhat = expm1(Prophet.predict(future).yhat)" if table.transform == "log1p"
                      else "yhat = Prophet.predict(future).yhat"),
        "note": "intervals are served from the version's seeded simulation (scaled by interval_calibration), "
                "not from Prophet's random sampling",
    }, indent=2))
    return {k: str(v) for k, v in paths.items()}
