"""From a fitted stock Prophet model to the predictor's compact row (and back to stock JSON)."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
from prophet import Prophet
from prophet.serialize import model_to_json

from pipelines.intervals import simulate_offsets


class UnsupportedModelError(ValueError):
    """The model uses a Prophet feature the numpy predictor does not evaluate."""


def check_supported(model: Prophet) -> None:
    """Linear or flat growth, additive unconditional seasonalities, MAP fit; nothing else."""
    problems = []
    if model.growth not in ("linear", "flat"):
        problems.append(f"growth={model.growth!r}")
    if model.holidays is not None or model.country_holidays:
        problems.append("holidays")
    if model.extra_regressors:
        problems.append("extra regressors")
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
        "m": float(p["m"][0, 0]),
        "sigma_obs": float(p["sigma_obs"][0, 0]),
        "delta": delta,
        "cp_t": cp_t,
        "beta": np.asarray(p["beta"][0], dtype=np.float64),
        "features": fourier_layout(model),
        "last_day": round((start + t_scale) / 86400.0),
        **offsets,
    }


def prophet_json_gz(model: Prophet) -> bytes:
    """The stock ``model_to_json`` of a model, gzip-compressed (reproducible bytes)."""
    return gzip.compress(model_to_json(model).encode(), compresslevel=1, mtime=0)
