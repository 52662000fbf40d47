"""One publish step for training and retraining: data -> fit -> evaluate -> gate -> register -> alias.

``publish`` builds one model version. With a parent it is derived: the parent's fit configuration is
inherited (unless overridden; recorded on the version), only stale stores are refitted (all asked
with ``force``) and every other store of the parent is copied, so a derived version always holds
every store of its parent. A parent that does not exist is ``ParentMissing`` (a clear failure); one
that cannot be read right now is ``RegistryUnavailable`` (try again), never "no parent".

The gate (``GatePolicy``) decides whether an alias may move: a share of the evaluated stores passes
their holdout gate, no store's forecast leaves a plausible range of its own history, and no store
of the version it builds on (or of the champion it would replace) is dropped without being listed.
A version that fails is registered (tag ``gate`` = ``fail`` with the reasons) but moves no alias.
The sales rows of the stores to fit are validated first (``sales_store.validate_sales``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.calendar import split_future
from pipelines.evaluate import GATE_FAIL, GATE_PASS
from pipelines.fitting import PROPHET_DEFAULTS, FitConfig
from pipelines.registry import Registry, Snapshot, VersionMissing
from pipelines.sales_store import Sales, validate_sales
from pipelines.train import TrainResult, train
from predictor.forecast import forecast
from predictor.table import ParamTable

ALIASES = ("champion", "challenger", "auto")
FIXED_WHEN_DERIVED = ("grid", "transform")  # every store of a version shares these


class PublishError(RuntimeError):
    """The version cannot be built from this input (a retry would fail the same way)."""


class ParentMissing(PublishError):
    """The version to derive from does not exist."""


@dataclass(frozen=True)
class GatePolicy:
    """When a version may move an alias."""

    min_pass_share: float = 0.5  # of the stores evaluated on their holdout, passing their gate
    plausible_factor: float = 3.0  # a forecast above this times the store's max of the last year is implausible
    horizon_days: int = 42  # days after each store's data checked for plausibility


@dataclass
class GateReport:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    pass_share: float | None = None
    evaluated: int = 0
    implausible: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


@dataclass
class Parent:
    """The version a derived version builds on: its table and its downloaded files."""

    version: str
    table: ParamTable
    folder: Path


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


def resolve_parent(registry: Registry, ref: str, dst: Path) -> Parent | None:
    """``ref`` (a version number, or ``@alias``) with its files downloaded into ``dst``.

    None when ``ref`` is an alias that does not exist; ``ParentMissing`` when a numbered version does
    not exist; ``RegistryUnavailable`` when the registry cannot say (try again).
    """
    if ref.startswith("@"):
        mv = registry.alias(ref[1:])
        if mv is None:
            return None
        version = str(mv.version)
    else:
        version = ref
    try:
        table = registry.table(version)
        folder = registry.download(version, dst)
    except VersionMissing:
        raise ParentMissing(f"parent version {version} of {registry.model_name} does not exist") from None
    return Parent(version, table, folder)


def stale(last: dict[str, int], table: ParamTable | None, stores: list[str] | None = None,
          every: bool = False) -> list[str]:
    """Stores whose model in ``table`` does not cover their latest open day (or is missing).

    ``stores`` None: every store with data. ``every``: all of them (a version too old, ``--force``).
    Named stores without data stay in the answer (the publish reports them).
    """
    candidates = sorted(set(stores), key=_natural) if stores is not None else sorted(last, key=_natural)
    if table is None or every:
        return candidates
    covered = dict(zip(table.store_id.tolist(), table.last_day.tolist(), strict=True))
    return [s for s in candidates if s not in last or s not in covered or last[s] > covered[s]]


def publish(sales: Sales, registry: Registry, *, stores: list[str] | None = None, parent: Parent | None = None,
            config: FitConfig | None = None, overrides: dict[str, Any] | None = None,
            gate: GatePolicy = GatePolicy(), alias: str | None = None, auto_champion_stores: int = 20,
            force: bool = False, drop: tuple[str, ...] = (), champion: ParamTable | None = None,
            workers: int | None = None, progress: bool = False, start_method: str | None = None,
            calendar: pd.DataFrame | None = None, backend: str = "local", ray_address: str | None = None,
            params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
            on_run: Callable[[str], None] | None = None, on_version: Callable[[str], None] | None = None,
            while_fitting: Callable[[], None] | None = None, parent_alias: str | None = None) -> Published:
    """Build, gate, register and alias one version (see the module docstring).

    ``parent_alias``: the alias the parent was found by; if it moved while the stores were fitted (a
    calendar push, another job), the refits are derived from the version it points at now instead, so
    nothing that version brought is lost.
    ``stores``: the stores to fit (None: every store with data). ``config``: the configuration of a
    version without a parent (with a parent it is inherited). ``champion``: the table of the version
    an alias move would replace, when it is not the parent (its stores must not be dropped unlisted).
    """
    t0 = time.perf_counter()
    if alias is not None and alias not in ALIASES:
        raise PublishError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    cfg = inherited_config(parent.table, overrides) if parent else apply_overrides(config or FitConfig(), overrides)
    base_version = parent.version if parent else ""
    todo = stale(sales.last, parent.table if parent else None, stores, every=force)
    if not todo:
        return Published("up_to_date", base_version or None, base_version, [], config=cfg.to_dict())
    present = set(sales.last)
    fit = [s for s in todo if s in present]
    missing = [s for s in todo if s not in present]
    if not fit:
        raise PublishError(f"no open-day sales for store(s) {', '.join(missing)}")
    frame = sales.frame
    history, _ = split_future(frame[frame["Store"].isin(fit)])
    validate_sales(history)
    factor = float(parent.table.meta["interval_calibration"]) if parent and "interval_calibration" in \
        parent.table.meta else None
    result = train(frame, cfg, stores=fit, workers=workers, progress=progress, start_method=start_method,
                   calendar=calendar, calibration_factor=factor, backend=backend, ray_address=ray_address,
                   while_fitting=while_fitting)
    failed = result.failed + [{"store_id": s, "reason": "no open-day sales"} for s in missing]
    if len(result.table) == 0:
        raise PublishError("no store could be fitted: " + "; ".join(f"{f['store_id']}: {f['reason']}"
                                                                   for f in failed))
    t_fit = time.perf_counter() - t0
    snap = Snapshot.from_result(result)
    if parent:
        with tempfile.TemporaryDirectory() as tmp:
            mv = registry.alias(parent_alias) if parent_alias else None
            if mv is not None and str(mv.version) != parent.version:  # it moved while we fitted
                parent = resolve_parent(registry, str(mv.version), Path(tmp)) or parent
                base_version = parent.version
            snap = snap.derived_from(parent.folder)
        snap.table = snap.table.with_meta(fit_config=cfg.to_dict(), parent_version=parent.version)
    report = check_gate(snap, result, frame, gate, reference=parent.table if parent else champion,
                        also=champion if parent else None, drop=drop)
    store_gate = {r.store_id: r.metrics.get("gate", "n/a") for r in result.results if not r.error}
    version_tags = {"gate": "pass" if report.passed else "fail", "refitted": _ids(store_gate),
                    "fit_config_from": f"version {parent.version}" if parent else "given",
                    **({"gate_reasons": "; ".join(report.reasons)[:4000]} if report.reasons else {}), **(tags or {})}
    reg = registry.register(snap, parent_version=base_version, params=params, tags=version_tags,
                            on_run=on_run, on_version=on_version)
    moved = None
    if alias and report.passed:
        has_champion = champion is not None or parent is not None
        moved = target_alias(alias, len(store_gate), auto_champion_stores, has_champion)
        registry.set_alias(moved, reg.version)
    return Published("registered", reg.version, base_version, sorted(store_gate, key=_natural), reg.model_uri,
                     reg.run_id, moved, report, store_gate, failed, cfg.to_dict(), result.summary,
                     {"fit": round(t_fit, 3), "total": round(time.perf_counter() - t0, 3)}, result)


def target_alias(alias: str, n_stores: int, auto_champion_stores: int, has_champion: bool = True) -> str:
    """The alias a passing version moves: ``auto`` is champion for a few stores (or when there is no
    champion yet: nothing to canary against), else challenger."""
    if alias != "auto":
        return alias
    return "champion" if n_stores <= auto_champion_stores or not has_champion else "challenger"


def check_gate(snap: Snapshot, result: TrainResult, sales: pd.DataFrame, policy: GatePolicy,
               reference: ParamTable | None = None, also: ParamTable | None = None,
               drop: tuple[str, ...] = ()) -> GateReport:
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
    report.implausible = implausible(result.table, sales, policy)
    if report.implausible:
        shown = "; ".join(f"{s}: {why}" for s, why in list(report.implausible.items())[:5])
        report.reasons.append(f"{len(report.implausible)} store(s) forecast outside a plausible range: {shown}")
    have = set(snap.table.store_id.tolist())
    listed = set(drop) | {f["store_id"] for f in result.failed if f["store_id"] not in have}
    for ref in (reference, also):
        if ref is not None:
            report.dropped += [s for s in ref.store_id.tolist() if s not in have and s not in listed
                               and s not in report.dropped]
    if report.dropped:
        report.reasons.append(f"{len(report.dropped)} store(s) of the version it replaces would be dropped "
                              f"without being listed: {_ids(report.dropped)}")
    report.passed = not report.reasons
    return report


def implausible(table: ParamTable, sales: pd.DataFrame, policy: GatePolicy) -> dict[str, str]:
    """Stores of ``table`` whose forecast of the days after their data, on the weekdays they open,
    is not finite or leaves [-M, plausible_factor x M], M their highest open-day sales of the last year."""
    if not len(table) or policy.horizon_days <= 0:
        return {}
    od = sales[(sales["Store"].isin(table.store_id)) & (sales["Open"] == 1)] if "Open" in sales.columns else sales
    day = od["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    y = od["Sales"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame({"s": od["Store"].astype(str).to_numpy(), "d": day, "y": y})
    frame = frame[np.isfinite(frame["y"])]
    last = frame.groupby("s")["d"].transform("max")
    top = frame[frame["d"] > last - 365].groupby("s")["y"].max()
    n, h = len(table), policy.horizon_days
    rows = np.repeat(np.arange(n), h)
    days = np.repeat(table.last_day.astype(np.int64), h) + np.tile(np.arange(1, h + 1), n)
    yhat = forecast(table, rows, days)[0]
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    opens = table.open_rate[rows, weekday] >= 0.5
    out: dict[str, str] = {}
    for i, sid in enumerate(table.store_id.tolist()):
        m = float(top.get(sid, np.nan))
        sel = (rows == i) & opens
        vals = yhat[sel]
        if not len(vals) or not np.isfinite(m) or m <= 0:
            continue
        if not np.isfinite(vals).all():
            out[sid] = "forecast is not finite"
        elif vals.max() > policy.plausible_factor * m or vals.min() < -m:
            out[sid] = (f"forecast {vals.min():.4g}..{vals.max():.4g} outside [-{m:.4g}, "
                        f"{policy.plausible_factor:g} x {m:.4g}] (its highest day of the last year)")
    return out


def download_parent(registry: Registry, ref: str) -> tuple[Parent | None, tempfile.TemporaryDirectory]:
    """``resolve_parent`` into a temporary folder the caller cleans up."""
    tmp = tempfile.TemporaryDirectory()
    try:
        return resolve_parent(registry, ref, Path(tmp.name)), tmp
    except BaseException:
        tmp.cleanup()
        raise


def _ids(stores: list[str] | dict[str, Any], most: int = 50) -> str:
    ids = sorted(stores, key=_natural)
    return ",".join(ids[:most]) + (f",... ({len(ids)} stores)" if len(ids) > most else "")


def _natural(store_id: str) -> tuple[int, int, str]:
    from serving.contract import store_sort_key  # ASCII digits only: '²' sorts as text

    return store_sort_key(store_id)


def carry_over(registry: Registry, candidate: str, champion: str) -> str:
    """The version to promote instead of ``candidate`` when the champion moved during its canary: the
    candidate with the stores the champion has refitted on newer data since (a new derived version,
    tagged ``carried_from``); ``candidate`` itself when there are none."""
    import zipfile

    from pipelines.registry import MODELS_FILE

    cand, champ = registry.table(candidate), registry.table(champion)
    ours = dict(zip(cand.store_id.tolist(), cand.last_day.tolist(), strict=True))
    newer = np.array([s not in ours or day > ours[s] for s, day in zip(champ.store_id.tolist(),
                                                                        champ.last_day.tolist(), strict=True)])
    if not newer.any():
        return candidate
    with tempfile.TemporaryDirectory() as tmp:
        cand_dir = registry.download(candidate, Path(tmp) / "candidate")
        champ_dir = registry.download(champion, Path(tmp) / "champion")
        sub = champ.take(newer)
        stores = sub.store_id.tolist()
        with zipfile.ZipFile(champ_dir / MODELS_FILE) as zf:
            models = {s: zf.read(f"{s}.json.gz") for s in stores}
        metrics = pd.read_csv(champ_dir / "store_metrics.csv", dtype={"store_id": str})
        snap = Snapshot(sub, models, metrics[metrics["store_id"].isin(stores)], {}, [], [],
                        str(champ.meta.get("data_end", "")), inherited_config(cand)).derived_from(cand_dir)
        reg = registry.register(snap, parent_version=candidate,
                                tags={"gate": "pass", "carried_from": champion, "carried": _ids(stores),
                                      "refitted": ""})
    return reg.version
