"""Deriving a model version: the one place a version is built from another.

``derive(parent, refit, calendar=...)`` builds every version that has a parent: a refit (``publish``),
a calendar-only version (``calendar_push``) and a rollout's carry-over (``carry_over``); a first
version (no parent) goes through it too. ``pipelines.versions.landing.land`` registers what a
``derive`` built and moves an alias compare-and-set, deriving again from where the alias points now
when another writer moved it first.

Invariants (``docs/architecture.md``), enforced here (6: by ``landing``):

1. Stores. A derived version holds every store of its parent; refitted stores replace theirs, new
   ones are added. Nothing else adds, drops or changes a store's model.
2. Calendar. Every store's calendar is its parent's, with newer information written over it field by
   field (``pipelines.data.calendar.lay``): (a) the actual history rows of a refitted store (days up to its
   new data end), (b) the calendar rows given to this derive (a push, ``--calendar``), newest last. A
   refit's own future rows from the sales file only fill days the parent does not know. So a refit never
   drops or reverts a known-ahead day; a carry-over lays the champion's calendar changes since the
   candidate's parent over the candidate (a three-way merge).
3. Nothing dropped. Calendar rows naming stores the version does not hold are refused (``UnknownStores``
   naming them) unless kept on purpose: then they travel with every derived version as pending rows
   (``pending_calendar.csv.gz``) and become the store's calendar when it is first fitted.
4. Record. Every version says what it is, as tags and in its manifest (the same dict): ``change``
   (``first``, ``refit``, ``calendar``, ``carry-over``), ``parent_version``, ``refitted`` (store ids),
   ``calendar_source``, ``calendar_date``, ``calendar_end``, ``data_end``, ``reason``.
5. Which alias moves: ``target_alias``, once. A version refitting more than ``few`` stores (default
   ``serving.contract.REFRESH_MAX_STORES``) never moves ``champion`` directly when a champion exists,
   whoever asked: it goes to ``challenger`` and its canary.
6. Writers compose. An alias moves only if it still points at the version the new one was derived
   from (``Registry.move_alias``); otherwise the version is derived again from the alias's new version
   (the fits are not redone) and registered again, a bounded number of times.

"Which stores are stale" is ``pipelines.versions.publish.stale``.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.calendar import Grid, changed, grids, lay, split
from pipelines.training.fitting import FitConfig
from pipelines.versions.registry import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODELS_FILE,
    PENDING_FILE,
    Registry,
    VersionFiles,
    VersionMissing,
)
from predictor.table import ParamTable
from serving.contract import REFRESH_MAX_STORES, store_sort_key

CHANGES = ("first", "refit", "calendar", "carry-over")


class PublishError(RuntimeError):
    """The version cannot be built from this input (a retry would fail the same way)."""


class ParentMissing(PublishError):
    """The version to derive from does not exist."""


KEEP_UNKNOWN_ENV = "STORECAST_KEEP_UNKNOWN_STORES"  # keep rows of unknown stores (pending) instead of refusing


class UnknownStores(ValueError):
    """Calendar rows naming stores the version does not hold (refused unless kept on purpose)."""

    def __init__(self, stores: list[str], what: str = "calendar") -> None:
        self.stores = stores
        shown = ", ".join(stores[:10]) + (f" and {len(stores) - 10} more" if len(stores) > 10 else "")
        super().__init__(f"the {what} names {len(stores)} store(s) the version does not hold: {shown} (nothing "
                         "registered; keep their rows for when they are trained with --keep-unknown-stores)")


@dataclass
class Parent:
    """The version a derived version builds on: its table and its downloaded files."""

    version: str
    table: ParamTable
    folder: Path

    @property
    def pending(self) -> pd.DataFrame | None:
        """Its calendar rows of stores it does not hold yet (None: none)."""
        path = self.folder / PENDING_FILE
        if not path.exists():
            return None
        from pipelines.data.calendar import read_calendar

        return read_calendar(path)


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


def download_parent(registry: Registry, ref: str) -> tuple[Parent | None, tempfile.TemporaryDirectory]:
    """``resolve_parent`` into a temporary folder the caller cleans up."""
    tmp = tempfile.TemporaryDirectory()
    try:
        return resolve_parent(registry, ref, Path(tmp.name)), tmp
    except BaseException:
        tmp.cleanup()
        raise


def target_alias(asked: str, n_refitted: int, has_champion: bool, few: int = REFRESH_MAX_STORES) -> str:
    """The alias a passing version moves. ``auto``: champion for a few stores, else challenger. Whoever
    asked, a version refitting more than ``few`` stores never moves an existing champion directly (it goes
    challenger -> canary); the first version (no champion yet: nothing to canary against) may."""
    if asked not in ("auto", "champion"):
        return asked
    return "champion" if not has_champion or n_refitted <= few else "challenger"


def store_grid(table: ParamTable, store_id: str) -> Grid | None:
    """One store's calendar in a table (None: the table does not hold the store or knows no day of it)."""
    pos = int(np.searchsorted(table.store_id, store_id)) if len(table) else 0
    if pos >= len(table) or table.store_id[pos] != store_id or not table.calendar.shape[1]:
        return None
    return lay((table.cal_start, table.calendar[pos]))


def known_calendars(parent: Parent | None, stores: list[str]) -> dict[str, Grid]:
    """What the parent knows of each store's calendar (its pending rows for stores it does not hold):
    what a refit of ``stores`` fits with, so its regressors see the calendar the version will serve."""
    if parent is None:
        return {}
    out = {s: g for s in stores if (g := store_grid(parent.table, s)) is not None}
    pending = parent.pending
    if pending is not None:
        out.update({s: g for s, g in grids(pending[pending["Store"].isin(stores)]).items() if s not in out})
    return out


def derive(parent: Parent | None, refit: VersionFiles | None = None, *, change: str,
           history_end: dict[str, int] | None = None, calendar: pd.DataFrame | dict[str, Grid] | None = None,
           calendar_source: str = "", older: dict[str, Grid] | None = None,
           keep_unknown: bool | Collection[str] = False, pending: pd.DataFrame | None = None,
           reason: str = "", calendar_date: str | None = None) -> VersionFiles:
    """The version ``parent`` + ``refit`` (its stores replaced or added) + ``calendar`` (rows laid over every
    store's, newest last) + the data end (see the module docstring for the rules).

    ``history_end``: each refitted store's last day with a sales figure (days since epoch; default its last
    open day): its calendar up to that day is history, after it the refit's own future rows (fill only).
    ``older``: calendar cells that only fill days still unknown. ``keep_unknown``: True, or the stores whose
    calendar rows may wait as pending rows when the version does not hold them; any other is refused.
    ``pending``: more pending rows to carry (older than ``calendar``).
    """
    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}; got {change!r}")
    if parent is None and refit is None:
        raise ValueError("a version needs a parent or refitted stores")
    given = grids(calendar) if isinstance(calendar, pd.DataFrame) else dict(calendar or {})
    older, history_end = older or {}, history_end or {}
    table, models, metrics = _stores(parent, refit)
    held = set(table.store_id.tolist())
    unknown = sorted(set(given) - held, key=store_sort_key)
    keep = set(unknown) if keep_unknown is True else set(keep_unknown or ()) & set(unknown)
    refused = [s for s in unknown if s not in keep]
    if refused:
        raise UnknownStores(refused)
    waiting = [p for p in (parent.pending if parent else None, pending) if p is not None and len(p)]
    if keep and isinstance(calendar, pd.DataFrame):
        waiting.append(calendar[calendar["Store"].isin(keep)])
    waiting_rows = (pd.concat(waiting, ignore_index=True).drop_duplicates(["Store", "Date"], keep="last")
                    if waiting else None)

    refitted = refit.table.store_id.tolist() if refit is not None else []
    before = set(parent.table.store_id.tolist()) if parent else set()
    first_fitted = [s for s in refitted if s not in before]
    waited = grids(waiting_rows[waiting_rows["Store"].isin(first_fitted)]) if waiting_rows is not None else {}
    calendars: dict[str, Grid | None] = {}
    last_day = dict(zip(refitted, refit.table.last_day.tolist(), strict=True)) if refit is not None else {}
    for sid in refitted:
        own = store_grid(refit.table, sid)
        end = history_end.get(sid, int(last_day[sid]))
        hist, fut = split(own, end)
        base = store_grid(parent.table, sid) if sid in before else waited.get(sid)
        calendars[sid] = lay(base, over=(hist, given.get(sid)), fill=(fut, older.get(sid)),
                             keep_from=own[0] if own is not None else None)
    for sid in (set(given) | set(older)) & held - set(refitted):
        calendars[sid] = lay(store_grid(parent.table, sid) if parent else None, over=(given.get(sid),),
                             fill=(older.get(sid),))
    if calendars:
        table = table.with_calendar({s: g if g is not None else (0, np.zeros((0, 4), np.int8))
                                     for s, g in calendars.items()})
    pending_out = waiting_rows[~waiting_rows["Store"].isin(held)].reset_index(drop=True) \
        if waiting_rows is not None else None

    ends = [e for e in (refit.data_end if refit else "", str(parent.table.meta.get("data_end", "")) if parent
                        else "") if e]
    data_end = max(ends) if ends else ""
    inherited = parent.table.meta.get("lineage", {}) if parent else {}
    if given or (refit is not None and parent is None):
        source = calendar_source or ("calendar" if given else "sales file")
        date = calendar_date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    else:
        source = calendar_source or inherited.get("calendar_source", f"version {parent.version}")
        date = calendar_date or inherited.get("calendar_date", "")
    lineage = {"change": change, "parent_version": parent.version if parent else "", "refitted": ids(refitted),
               "calendar_source": source[:500], "calendar_date": date, "calendar_end": calendar_end(table, data_end),
               "data_end": data_end, "reason": reason[:500]}
    table = table.with_meta(data_end=data_end, calendar_end=lineage["calendar_end"], lineage=lineage,
                            parent_version=lineage["parent_version"])
    if refit is not None:
        return replace(refit, table=table, models=models, metrics=metrics, data_end=data_end, lineage=lineage,
                       pending=pending_out)
    path = parent.folder / MANIFEST_FILE
    manifest = json.loads(path.read_text()) if path.exists() else {}
    cfg = FitConfig.from_dict(table.meta["fit_config"]) if "fit_config" in table.meta else FitConfig.preset("seed")
    gate_failed = metrics.loc[metrics["gate"] == "fail", "store_id"].tolist() if "gate" in metrics.columns else []
    return VersionFiles(table, models, metrics, manifest.get("summary", {}), manifest.get("failed", []), gate_failed,
                        data_end, cfg, lineage=lineage, pending=pending_out)


def _stores(parent: Parent | None, refit: VersionFiles | None) -> tuple[ParamTable, dict[str, bytes], pd.DataFrame]:
    """Invariant 1: the parent's stores with the refit's replaced or added (table, models, metrics)."""
    if parent is None:
        return refit.table, dict(refit.models), refit.metrics
    with zipfile.ZipFile(parent.folder / MODELS_FILE) as zf:
        models = {name.removesuffix(".json.gz"): zf.read(name) for name in zf.namelist()}
    path = parent.folder / METRICS_FILE
    metrics = pd.read_csv(path, dtype={"store_id": str}) if path.exists() else pd.DataFrame({"store_id": []})
    if refit is None:
        return parent.table, models, metrics
    table = parent.table.merged_with(refit.table) if len(parent.table) else refit.table
    models.update(refit.models)
    metrics = pd.concat([metrics[~metrics["store_id"].isin(refit.metrics["store_id"])], refit.metrics],
                        ignore_index=True)
    return table, models, metrics


def calendar_end(table: ParamTable, default: str = "") -> str:
    """The last day any store's calendar knows (``default`` when none)."""
    known = np.flatnonzero((table.calendar >= 0).any(axis=(0, 2))) if table.calendar.size else []
    return str(np.datetime64(table.cal_start + int(known[-1]), "D")) if len(known) else default


def ids(stores: Collection[str], most: int = 50) -> str:
    """Store ids for a tag: natural order, the first ``most`` and the count."""
    out = sorted(stores, key=store_sort_key)
    return ",".join(out[:most]) + (f",... ({len(out)} stores)" if len(out) > most else "")


# ---- carry-over: the rollout's rebase onto a champion that moved during the canary --------------------
def carry_over(registry: Registry, candidate: str, champion: str) -> str:
    """The version to promote instead of ``candidate`` when the champion moved during its canary: the
    candidate with the stores the champion has refitted on newer data since, and the champion's calendar
    changes since the candidate's parent laid over it (a new version, ``change`` ``carry-over``, tagged
    ``carried_from``); ``candidate`` itself when there is nothing to carry."""
    cand, champ = registry.table(candidate), registry.table(champion)
    ours = dict(zip(cand.store_id.tolist(), cand.last_day.tolist(), strict=True))
    newer = np.array([s not in ours or day > ours[s] for s, day in zip(champ.store_id.tolist(),
                                                                        champ.last_day.tolist(), strict=True)])
    ancestor_version = str(cand.meta.get("carried_from") or cand.meta.get("parent_version")
                           or registry.version(candidate).tags.get("parent_version") or "")  # the merge base
    ancestor = registry.table(ancestor_version) if ancestor_version and ancestor_version != candidate else None
    changes, fills = _calendar_changes(champ, ancestor, ours)
    if not newer.any() and not changes:
        return candidate
    stores = champ.store_id[newer].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        parent = resolve_parent(registry, candidate, Path(tmp) / "candidate")
        champ_dir = registry.download(champion, Path(tmp) / "champion")
        refit = None
        if stores:
            with zipfile.ZipFile(champ_dir / MODELS_FILE) as zf:
                models = {s: zf.read(f"{s}.json.gz") for s in stores}
            metrics = pd.read_csv(champ_dir / METRICS_FILE, dtype={"store_id": str})
            cfg = FitConfig.from_dict(cand.meta["fit_config"]) if "fit_config" in cand.meta else FitConfig()
            refit = VersionFiles(champ.take(newer), models, metrics[metrics["store_id"].isin(stores)], {}, [], [],
                             str(champ.meta.get("data_end", "")), cfg)
        champ_pending = (Parent(champion, champ, champ_dir)).pending
        champ_lineage = champ.meta.get("lineage", {})
        snap = derive(parent, refit, change="carry-over", calendar=changes, older=fills, pending=champ_pending,
                      keep_unknown=True, calendar_source=f"version {champion}: "
                      f"{champ_lineage.get('calendar_source', '')}" if changes else "",
                      reason=f"champion moved to {champion} during the canary of {candidate}",
                      history_end={s: int(d) for s, d in zip(stores, champ.last_day[newer].tolist(), strict=True)})
        snap.table = snap.table.with_meta(carried_from=champion)
        reg = registry.register(snap, parent_version=candidate, tags={"gate": "pass", "carried_from": champion,
                                                                       "carried": ids(stores)})
    return reg.version


def _calendar_changes(champ: ParamTable, ancestor: ParamTable | None, last: dict[str, int]
                      ) -> tuple[dict[str, Grid], dict[str, Grid]]:
    """(cells the champion changed since ``ancestor``, the champion's cells) of each store's days after the
    candidate's data (``last``); with no ancestor every champion cell only fills."""
    changes: dict[str, Grid] = {}
    fills: dict[str, Grid] = {}
    for sid in champ.store_id.tolist():
        g = split(store_grid(champ, sid), last.get(sid, -(1 << 40)))[1]
        if g is None or not len(g[1]):
            continue
        if sid in last:
            fills[sid] = g
        if ancestor is not None and (diff := changed(g, store_grid(ancestor, sid))) is not None:
            changes[sid] = diff
    return changes, fills
