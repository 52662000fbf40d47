"""A new calendar without a refit: a derived version with the same parameters and the new calendar.

``push(calendar, ...)`` downloads the version an alias points at (or a given one), overlays the
calendar's rows on each store's calendar (the file wins on the days it gives), registers the result
as a new version whose parent is the old one, and moves the alias: a planner's promotion entered
this morning is served as soon as the predictors follow the alias. ``storecast calendar push`` and
the retrain service's ``com.storecast.calendar.updated`` event both come here.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.calendar import calendar_cells
from pipelines.fitting import FitConfig
from predictor.table import ParamTable


@dataclass(frozen=True)
class Pushed:
    """The version a calendar push registered."""

    version: str
    parent_version: str
    model_uri: str
    stores: int
    stores_changed: int
    days: int
    calendar_end: str
    seconds: float


def overlay(table: ParamTable, calendar: pd.DataFrame) -> tuple[ParamTable, int, int]:
    """The table with the calendar's rows written over each store's calendar; (table, stores changed, rows)."""
    new = calendar_cells(calendar[calendar["Store"].isin(table.store_id.tolist())])
    if not new:
        return table, 0, 0
    index = {s: i for i, s in enumerate(table.store_id.tolist())}
    calendars: dict[str, tuple[int, np.ndarray]] = {}
    rows = 0
    for sid, (days, cells) in new.items():
        i = index[sid]
        old = table.calendar[i]
        used = np.flatnonzero((old >= 0).any(axis=1))
        start = min(int(days.min()), table.cal_start + int(used[0]) if len(used) else int(days.min()))
        end = max(int(days.max()), table.cal_start + int(used[-1]) if len(used) else int(days.max()))
        grid = np.full((end - start + 1, 4), -1, dtype=np.int8)
        if len(used):
            a = table.cal_start + int(used[0]) - start
            grid[a: a + int(used[-1]) - int(used[0]) + 1] = old[used[0]: used[-1] + 1]
        grid[days - start] = cells
        calendars[sid] = (start, grid)
        rows += len(days)
    return table.with_calendar(calendars), len(calendars), rows


def push(calendar: pd.DataFrame, *, tracking_uri: str | None = None, model_name: str = "storecast",
         alias: str = "champion", version: str | None = None, move_alias: bool = True) -> Pushed:
    """Register the version at ``alias`` (or ``version``) again with ``calendar`` overlaid; move ``alias``."""
    from mlflow import MlflowClient

    from pipelines import registry

    t0 = time.perf_counter()
    uri = registry.tracking_uri(tracking_uri)
    client = MlflowClient(uri, uri)
    parent = version or registry.current_version(client, model_name, alias)
    if parent is None:
        raise ValueError(f"no version at models:/{model_name}@{alias}: train one first")
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.download(f"models:/{model_name}/{parent}", tmp, uri=uri)
        params = next(folder.rglob(registry.PARAMS_FILE))
        art = params.parent
        table = ParamTable.load(params)
        updated, changed, days = overlay(table, calendar)
        if changed == 0:
            raise ValueError(f"the calendar names none of the {len(table)} stores of version {parent}")
        with zipfile.ZipFile(art / registry.MODELS_FILE) as zf:
            models = {name.removesuffix(".json.gz"): zf.read(name) for name in zf.namelist()}
        metrics = pd.read_csv(art / registry.METRICS_FILE, dtype={"store_id": str})
        manifest: dict[str, Any] = json.loads((art / registry.MANIFEST_FILE).read_text())
    cfg = FitConfig.from_dict(table.meta["fit_config"]) if "fit_config" in table.meta else FitConfig.preset("seed")
    end = _calendar_end(updated)
    updated = updated.with_meta(calendar_end=end, calendar_parent=str(parent))
    gate_failed = metrics.loc[metrics["gate"] == "fail", "store_id"].tolist() if "gate" in metrics.columns else []
    snap = registry.Snapshot(updated, models, metrics, manifest.get("summary", {}), manifest.get("failed", []),
                             gate_failed, str(table.meta.get("data_end", "")), cfg)
    with contextlib.redirect_stdout(sys.stderr):
        reg = registry.register(snap, uri=uri, model_name=model_name, alias=alias if move_alias else None,
                                parent_version=str(parent), params={"calendar_push": "true"})
    return Pushed(version=reg.version, parent_version=str(parent), model_uri=reg.model_uri, stores=len(updated),
                  stores_changed=changed, days=days, calendar_end=end, seconds=time.perf_counter() - t0)


def _calendar_end(table: ParamTable) -> str:
    known = np.flatnonzero((table.calendar >= 0).any(axis=(0, 2)))
    if not len(known):
        return str(table.meta.get("data_end", ""))
    return str(np.datetime64(table.cal_start + int(known[-1]), "D"))


def main_push(path: str, **kwargs: Any) -> dict[str, Any]:
    """Read ``path`` and push it; the answer as a JSON-ready dict (CLI and retrain service)."""
    from pipelines.calendar import read_calendar

    pushed = push(read_calendar(Path(path)), **kwargs)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in pushed.__dict__.items()}
