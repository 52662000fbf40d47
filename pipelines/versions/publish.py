"""One publish step for training and retraining: data -> fit -> evaluate -> gate -> derive -> register -> alias.

``publish`` builds one model version. With a parent it is derived (``pipelines.versions.lineage.derive``): the
parent's fit configuration is inherited (unless overridden; recorded on the version), only stale stores
are refitted (all asked with ``force``), every other store of the parent is kept, and so is every
store's known-ahead calendar. A parent that does not exist is ``ParentMissing`` (a clear failure); one
that cannot be read right now is ``RegistryUnavailable`` (try again), never "no parent".

The gate (``GatePolicy``) decides whether an alias may move: a share of the evaluated stores passes
their holdout gate, no store's forecast leaves a plausible range of its own history, and no store
of the version it builds on (or of the champion it would replace) is dropped without being listed.
A version that fails is registered (tag ``gate`` = ``fail`` with the reasons) but moves no alias.
Which alias a passing version moves is ``pipelines.versions.lineage.target_alias``; it moves compare-and-set
(``pipelines.versions.landing.land``: derived again when another writer moved it first). ``stale`` is the one
rule of which stores need a refit. The sales rows of the stores to fit are validated first
(``sales_store.validate_sales``); a store of the data without any open-day sales figure is listed as
failed, never left out silently, and data with nothing to train on is a ``PublishError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.calendar import split_future
from pipelines.data.sales_store import Sales, validate_sales
from pipelines.training.evaluate import GATE_FAIL, GATE_PASS
from pipelines.training.fitting import PROPHET_DEFAULTS, FitConfig
from pipelines.training.train import TrainResult, train
from pipelines.versions.landing import land
from pipelines.versions.lineage import (
    Parent,
    ParentMissing,
    PublishError,
    UnknownStores,
    derive,
    download_parent,
    known_calendars,
    resolve_parent,
    target_alias,
)
from pipelines.versions.lineage import ids as _ids
from pipelines.versions.registry import Registry, VersionFiles
from predictor.table import ParamTable
from predictor.validate import PLAUSIBLE_BAND, horizon_problems
from serving.contract import MAX_DAYS_AHEAD, REFRESH_MAX_STORES, store_sort_key

# Parent, ParentMissing, PublishError, download_parent, resolve_parent: lineage's (importable from here too)
__all__ = ["ALIASES", "GatePolicy", "GateReport", "Parent", "ParentMissing", "PublishError", "Published",
           "apply_overrides", "check_gate", "download_parent", "inherited_config", "publish",
           "resolve_parent", "stale", "trainable"]

ALIASES = ("champion", "challenger", "auto")
FIXED_WHEN_DERIVED = ("grid", "transform")  # every store of a version shares these


@dataclass(frozen=True)
class GatePolicy:
    """When a version may move an alias."""

    min_pass_share: float = 0.5  # of the stores evaluated on their holdout, passing their gate
    plausible_factor: float = PLAUSIBLE_BAND  # an open day's forecast above this times the store's best day
    horizon_days: int = MAX_DAYS_AHEAD  # days after each store's data checked (and its whole calendar)


@dataclass
class GateReport:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    pass_share: float | None = None
    evaluated: int = 0
    implausible: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


@dataclass
class Published:
    """What a publish did."""

    status: str  # "registered" or "up_to_date"
    version: str | None
    parent_version: str
    refitted: list[str]
    model_uri: str | None = None
    run_id: str | None = None
    alias: str | None = None
    gate: GateReport | None = None
    store_gate: dict[str, str] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    result: TrainResult | None = field(default=None, repr=False)
    retries: int = 0  # times derived again because another writer moved the alias first
    pending: list[str] = field(default_factory=list)  # stores whose calendar rows wait until they are trained
    lineage: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("result")
        return out


def inherited_config(table: ParamTable, overrides: dict[str, Any] | None = None) -> FitConfig:
    """The fit configuration recorded on a version (older versions: rebuilt from what they recorded),
    with ``overrides`` (FitConfig fields; ``interval_width`` goes into ``prophet``)."""
    meta = table.meta
    if "fit_config" in meta:
        cfg = FitConfig.from_dict(meta["fit_config"])
    else:
        monthly = int(np.sum(np.isclose(table.feat_period, 30.5) & (table.feat_cos > 0))) if len(
            table.feat_period) else 0
        cfg = FitConfig(fitter=meta.get("fitter", "prophet-batch"), seed=int(meta.get("seed", 0)),
                        holdout_days=int(meta.get("holdout_days", 42)),
                        prophet=dict(meta.get("prophet", PROPHET_DEFAULTS)), grid=tuple(table.iv_days.tolist()),
                        regressors=tuple(str(r) for r in table.reg_names), monthly_order=monthly,
                        transform=table.transform, calibrate=False)
    return apply_overrides(cfg, overrides, derived=True)


def apply_overrides(cfg: FitConfig, overrides: dict[str, Any] | None, derived: bool = False) -> FitConfig:
    """``cfg`` with some fields changed; raises ``PublishError`` for one a derived version cannot change."""
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "interval_width" in changes:
        changes["prophet"] = {**cfg.prophet, "interval_width": float(changes.pop("interval_width"))}
    if derived:
        fixed = [k for k in FIXED_WHEN_DERIVED if k in changes and changes[k] != getattr(cfg, k)]
        if fixed:
            raise PublishError(f"cannot change {', '.join(fixed)} in a derived version (every store of a version "
                               "shares it): train every store instead")
    try:
        return cfg.replace(**changes) if changes else cfg
    except (TypeError, ValueError) as exc:
        raise PublishError(f"fit configuration: {exc}") from None


def stale(last: dict[str, int], table: ParamTable | None, stores: list[str] | None = None,
          every: bool = False) -> list[str]:
    """Stores whose model in ``table`` does not cover their latest open day (or is missing).

    ``stores`` None: every store with data. ``every``: all of them (a version too old, ``--force``).
    Named stores without data stay in the answer (the publish reports them).
    """
    candidates = sorted(set(stores), key=store_sort_key) if stores is not None else sorted(last, key=store_sort_key)
    if table is None or every:
        return candidates
    covered = dict(zip(table.store_id.tolist(), table.last_day.tolist(), strict=True))
    return [s for s in candidates if s not in last or s not in covered or last[s] > covered[s]]


def publish(sales: Sales, registry: Registry, *, stores: list[str] | None = None, parent: Parent | None = None,
            config: FitConfig | None = None, overrides: dict[str, Any] | None = None,
            gate: GatePolicy = GatePolicy(), alias: str | None = None, auto_champion_stores: int = REFRESH_MAX_STORES,
            force: bool = False, drop: tuple[str, ...] = (), champion: ParamTable | None = None,
            workers: int | None = None, progress: bool = False, start_method: str | None = None,
            calendar: pd.DataFrame | None = None, backend: str = "local", ray_address: str | None = None,
            params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
            on_run: Callable[[str], None] | None = None, on_version: Callable[[str], None] | None = None,
            while_fitting: Callable[[], None] | None = None, parent_alias: str | None = None,
            keep_unknown: bool = False, calendar_source: str = "", reason: str = "") -> Published:
    """Build, gate, register and alias one version (see the module docstring).

    ``parent_alias``: the alias the parent was found by; if it moved while the stores were fitted (a
    calendar push, another job), the refits are derived from the version it points at now instead, so
    nothing that version brought is lost; the same when the alias moves between registering and moving it.
    ``stores``: the stores to fit (None: every store with data). ``config``: the configuration of a
    version without a parent (with a parent it is inherited). ``champion``: the table of the version
    an alias move would replace, when it is not the parent (its stores must not be dropped unlisted).
    ``calendar``: calendar rows laid over every store's (``calendar_source`` names them); rows of stores
    the version does not hold wait as pending rows when the stores are in the sales data (or with
    ``keep_unknown``), else they are refused (``UnknownStores``) before anything is fitted.
    """
    t0 = time.perf_counter()
    if alias is not None and alias not in ALIASES:
        raise PublishError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    cfg = inherited_config(parent.table, overrides) if parent else apply_overrides(config or FitConfig(), overrides)
    base_version = parent.version if parent else ""
    frame = sales.frame
    todo = stale(sales.last, parent.table if parent else None, stores, every=force)
    present = set(sales.last)
    held = set(parent.table.store_id.tolist()) if parent else set()
    in_data = set(frame["Store"].astype(str).unique().tolist()) if len(frame) else set()
    # stores of the data without any open-day sales figure: listed as failed, never left out silently (a first
    # version asked for every store with sales is a version of every store in the data)
    every = stores is None or (parent is None and set(stores) >= present)
    empty = [s for s in in_data - present - held if every or s in stores]
    missing = sorted(set(s for s in todo if s not in present) | set(empty), key=store_sort_key)
    fit = [s for s in todo if s in present]
    if not fit and parent is not None and not (stores is not None and missing):
        return Published("up_to_date", base_version or None, base_version, [], config=cfg.to_dict())
    if not fit:
        trainable(sales)
        raise PublishError(f"nothing to train on: no open-day sales for store(s) {_ids(missing)}")
    keep: bool | set[str] = True if keep_unknown else in_data  # rows of stores in the data wait for them
    if calendar is not None and len(calendar) and keep is not True:
        unknown = set(calendar["Store"].unique().tolist()) - held - in_data
        if unknown:  # refused before minutes of fitting (derive refuses them too)
            raise UnknownStores(sorted(unknown, key=store_sort_key))
    history, _ = split_future(frame[frame["Store"].isin(fit)])
    validate_sales(history)
    factor = float(parent.table.meta["interval_calibration"]) if parent and "interval_calibration" in \
        parent.table.meta else None
    result = train(frame, cfg, stores=fit, workers=workers, progress=progress, start_method=start_method,
                   calendar=calendar, calibration_factor=factor, backend=backend, ray_address=ray_address,
                   while_fitting=while_fitting, known=known_calendars(parent, fit))
    failed = result.failed + [{"store_id": s, "reason": "no open-day sales"} for s in missing]
    if len(result.table) == 0:
        raise PublishError("no store could be fitted: " + "; ".join(f"{f['store_id']}: {f['reason']}"
                                                                   for f in failed))
    t_fit = time.perf_counter() - t0
    refit = VersionFiles.from_result(result)
    refit.failed, refit.summary = failed, {**result.summary, "stores_skipped": len(failed)}
    store_gate = {r.store_id: r.metrics.get("gate", "n/a") for r in result.results if not r.error}
    reports: list[GateReport] = []

    def build(base: Parent | None) -> tuple[VersionFiles, str | None, dict[str, str]]:
        snap = derive(base, refit, change="refit" if base else "first", history_end=result.history_end,
                      calendar=calendar, calendar_source=calendar_source, keep_unknown=keep, reason=reason)
        snap.table = snap.table.with_meta(fit_config=cfg.to_dict())
        report = check_gate(snap, result, gate, reference=base.table if base else champion,
                            also=champion if base else None, drop=drop, failed=failed)
        reports.append(report)
        version_tags = {"gate": "pass" if report.passed else "fail",
                        "fit_config_from": f"version {base.version}" if base else "given",
                        **({"failed": "; ".join(f"{f['store_id']}: {f['reason']}" for f in failed)} if failed else {}),
                        **({"gate_reasons": "; ".join(report.reasons)[:4000]} if report.reasons else {}),
                        **(tags or {})}
        target = None
        if alias and report.passed:
            has_champion = champion is not None or base is not None or registry.alias("champion") is not None
            target = target_alias(alias, len(store_gate), has_champion, auto_champion_stores)
        return snap, target, version_tags

    landed = land(registry, build, parent, follow=parent_alias if parent else None, params=params,
                  on_run=on_run, on_version=on_version)
    reg, snap = landed.registered, landed.snapshot
    pending = sorted(set(snap.pending["Store"].tolist()), key=store_sort_key) if snap.pending is not None else []
    return Published("registered", reg.version, landed.parent.version if landed.parent else "",
                     sorted(store_gate, key=store_sort_key), reg.model_uri, reg.run_id, landed.alias, reports[-1],
                     store_gate, failed, cfg.to_dict(), refit.summary,
                     {"fit": round(t_fit, 3), "total": round(time.perf_counter() - t0, 3)},
                     result, landed.retries, pending, snap.lineage)


def trainable(sales: Sales) -> None:
    """``PublishError`` when the data holds nothing to train on at all (checked before any registry call)."""
    if not sales.last:
        raise PublishError("nothing to train on: " + ("no store has an open-day sales figure" if len(sales.frame)
                                                      else "the sales data has no rows"))


def check_gate(snap: VersionFiles, result: TrainResult, policy: GatePolicy,
               reference: ParamTable | None = None, also: ParamTable | None = None,
               drop: tuple[str, ...] = (), failed: list[dict[str, str]] | None = None) -> GateReport:
    """The version's gate: pass share, plausible forecasts of the refitted stores, no unlisted drops."""
    report = GateReport(passed=True)
    gates = [r.metrics.get("gate") for r in result.results if not r.error]
    judged = [g for g in gates if g in (GATE_PASS, GATE_FAIL)]
    report.evaluated = len(judged)
    if judged:
        report.pass_share = sum(g == GATE_PASS for g in judged) / len(judged)
        if report.pass_share < policy.min_pass_share:
            report.reasons.append(f"{report.pass_share:.0%} of {len(judged)} evaluated stores pass their holdout "
                                  f"gate (need {policy.min_pass_share:.0%})")
    report.implausible = implausible(result.table, policy)
    if report.implausible:
        shown = "; ".join(f"{s}: {why}" for s, why in list(report.implausible.items())[:5])
        report.reasons.append(f"{len(report.implausible)} store(s) forecast outside a plausible range: {shown}")
    have = set(snap.table.store_id.tolist())
    listed = set(drop) | {f["store_id"] for f in (result.failed if failed is None else failed)
                          if f["store_id"] not in have}
    for ref in (reference, also):
        if ref is not None:
            report.dropped += [s for s in ref.store_id.tolist() if s not in have and s not in listed
                               and s not in report.dropped]
    if report.dropped:
        report.reasons.append(f"{len(report.dropped)} store(s) of the version it replaces would be dropped "
                              f"without being listed: {_ids(report.dropped)}")
    report.passed = not report.reasons
    return report


def implausible(table: ParamTable, policy: GatePolicy) -> dict[str, str]:
    """Stores of ``table`` whose forecast, on any day from the day after their data to the end of their
    known-ahead calendar and the default horizon, on the calendar's actual days, is not finite or leaves the
    plausible band of their best day (``predictor.validate.horizon_problems``: the predictor's own check)."""
    if not len(table):
        return {}
    return horizon_problems(table, policy.horizon_days, policy.plausible_factor)


