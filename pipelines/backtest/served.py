"""The served model in a window: trained by the project's trainer at the cutoff, served on loopback, asked
through the business API exactly as a planner asks it.

``train_version`` fits every store on the sales before the window with the window's known-ahead calendar
(``pipelines.training.train.train``) and writes the version as a folder the predictor serves
(``pipelines.versions.registry.write_version_files``). ``ask`` starts a predictor and the transformer on
loopback (``pipelines.stack.LocalStack``) and sends V1 ``:predict`` requests (``storeId``, ``beginDate``,
``endDate``; batched, retried: ``pipelines.clients.retrying``) for every store of the version over the window.
A closed day is answered 0 by the API; the answers are recorded as they came.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest.windows import Cut
from pipelines.clients.retrying import BatchClient, Policy
from pipelines.stack import LocalStack
from pipelines.training.fitting import FitConfig
from pipelines.training.train import TrainResult, train
from pipelines.versions.registry import VersionFiles, write_version_files
from serving.contract import PARAMS_FILE

BATCH_STORES = 100  # stores in one business request (42 days each: 4,200 rows)


@dataclass
class Served:
    """The business API's answers for one window, and what happened on the way."""

    answers: pd.DataFrame  # Store, Date, value, lower, upper, open (the API's), calendar (where the day came from)
    stores: list[str]  # the stores of the version
    result: TrainResult
    folder: Path
    refused: dict[str, str] = field(default_factory=dict)  # store -> why the predictor would not serve it
    failed: dict[str, str] = field(default_factory=dict)  # store -> why the API gave no answer
    seconds: dict[str, float] = field(default_factory=dict)
    version: str | None = None


def train_version(cut: Cut, cfg: FitConfig, folder: Path, workers: int | None = None,
                  progress: bool = False) -> TrainResult:
    """Fit every store of ``cut.history`` with the window's calendar; write the version to ``folder``."""
    result = train(cut.history, cfg, calendar=cut.calendar, workers=workers, progress=progress)
    write_version_files(VersionFiles.from_result(result), folder)
    return result


def implausible_stores(folder: Path) -> dict[str, str]:
    """Stores of the version in ``folder`` the predictor's version check refuses, with why (its own rule)."""
    from predictor.table import ParamTable
    from predictor.validate import horizon_problems

    return horizon_problems(ParamTable.load(folder / PARAMS_FILE))


def drop_stores(folder: Path, stores: list[str]) -> None:
    """Rewrite the version's table without ``stores``."""
    from predictor.table import ParamTable

    table = ParamTable.load(folder / PARAMS_FILE)
    table.take(~np.isin(table.store_id.astype(str), stores)).save(folder / PARAMS_FILE)


def start_stack(folder: Path, log_dir: Path | None, timeout: float) -> tuple[LocalStack, dict[str, str]]:
    """A predictor serving ``folder`` and the transformer, ready; if the predictor refuses the version, the
    stores it refuses are dropped from the folder's table (returned with why) and it is started again once."""
    stack = LocalStack(str(folder), log_dir=log_dir, predictor_args=["--refresh-seconds", "0"])
    try:
        return stack.start(timeout=timeout), {}
    except (RuntimeError, TimeoutError) as first:
        refused = implausible_stores(folder)
        if not refused:
            raise
        drop_stores(folder, list(refused))
        stack = LocalStack(str(folder), log_dir=log_dir, predictor_args=["--refresh-seconds", "0"])
        try:
            return stack.start(timeout=timeout), refused
        except (RuntimeError, TimeoutError) as second:
            raise second from first


def ask(url: str, stores: list[str], begin: str, end: str, concurrency: int = 2,
        batch: int = BATCH_STORES) -> tuple[pd.DataFrame, dict[str, str], str | None]:
    """Every store's window from the business API at ``url``: (answers, stores given up with why, version)."""
    client = BatchClient(url, begin, end, Policy(concurrency=concurrency, timeout=300.0), seed=0)
    asyncio.run(client.run(stores, batch))
    rows: dict[str, list[Any]] = {k: [] for k in ("Store", "Date", "value", "lower", "upper", "open", "calendar")}
    versions = set()
    for store in stores:
        if store not in client.answers:
            continue
        prediction, version = client.answers[store]
        versions.add(version)
        for r in prediction["forecast"]:
            rows["Store"].append(store)
            rows["Date"].append(r["timestamp"][:10])
            for k in ("value", "lower", "upper"):
                rows[k].append(np.nan if r.get(k) is None else float(r[k]))
            rows["open"].append(r.get("open"))
            rows["calendar"].append(r.get("calendar"))
    answers = pd.DataFrame(rows)
    answers["Date"] = pd.to_datetime(answers["Date"])
    version = next(iter(versions)) if len(versions) == 1 else None
    return answers, dict(client.stats.failed), None if version is None else str(version)


def serve_and_ask(cut: Cut, cfg: FitConfig, folder: Path, workers: int | None = None, log_dir: Path | None = None,
                  timeout: float = 600.0, say: Any = None) -> Served:
    """Train at the cutoff, serve the version on loopback and ask the business API for the window."""
    import time

    say = say or (lambda _msg: None)
    seconds = {}
    t0 = time.perf_counter()
    result = train_version(cut, cfg, folder, workers or os.cpu_count() or 1)
    seconds["train"] = time.perf_counter() - t0
    say(f"trained {len(result.table)} stores ({len(result.failed)} left out, {len(result.gate_failed)} failing "
        f"the trainer's gate) in {seconds['train']:.1f} s")
    t0 = time.perf_counter()
    stack, refused = start_stack(folder, log_dir, timeout)
    seconds["serve_start"] = time.perf_counter() - t0
    if refused:
        say(f"the predictor refused {len(refused)} store(s) of the version, served without them: "
            f"{', '.join(list(refused)[:10])}")
    try:
        from predictor.table import ParamTable

        stores = [str(s) for s in ParamTable.load(folder / PARAMS_FILE).store_id.tolist()]
        say(f"serving {len(stores)} stores at {stack.transformer.url} (ready in {seconds['serve_start']:.1f} s); "
            "asking the business API")
        t0 = time.perf_counter()
        answers, failed, version = ask(stack.transformer.url, stores, str(cut.window.start), str(cut.window.end))
        seconds["ask"] = time.perf_counter() - t0
    finally:
        stack.stop()
    say(f"{len(answers)} store-days answered for {len(stores) - len(failed)} stores in {seconds['ask']:.1f} s"
        + (f"; {len(failed)} stores failed" if failed else ""))
    return Served(answers, stores, result, folder, refused, failed, seconds, version)
