"""A new calendar without a refit: a derived version with the same parameters and the new calendar.

``push(calendar, ...)`` downloads the version an alias points at (or a given one), lays the calendar's
rows over each store's calendar (``pipelines.versions.lineage.derive``: the file wins on the days and fields it
gives), registers the result as a new version whose parent is the old one, and moves the alias
compare-and-set (when another writer moved it first, the calendar is laid over that version instead):
a planner's promotion entered this morning is served as soon as the predictors follow the alias.
``storecast calendar push`` and the retrain service's ``calendar.updated`` event both
come here: the event names a calendar held in the sales store (``event_ref``; never a path on the
server), which ``push_ref`` reads through the store's bounded reader (``pipelines.data.store_objects``).
A calendar naming stores the version does not hold is refused (``UnknownStores`` naming them, nothing
registered) unless ``keep_unknown``: then those rows wait in the version as pending rows and become the
stores' calendar when they are first fitted.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.events import BadEvent
from pipelines.versions.landing import land
from pipelines.versions.lineage import Parent, derive, resolve_parent
from pipelines.versions.registry import Registry, VersionFiles
from serving.contract import MODEL_NAME, store_sort_key


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
    retries: int = 0  # times laid over another version because a writer moved the alias first
    pending: list[str] = field(default_factory=list)  # stores not in the version whose rows were kept


def push(calendar: pd.DataFrame, *, tracking_uri: str | None = None, model_name: str = MODEL_NAME,
         alias: str = "champion", version: str | None = None, move_alias: bool = True, keep_unknown: bool = False,
         source: str = "calendar") -> Pushed:
    """Register the version at ``alias`` (or ``version``) again with ``calendar`` laid over it; move ``alias``."""
    t0 = time.perf_counter()
    registry = Registry(tracking_uri, model_name)
    with tempfile.TemporaryDirectory() as tmp:
        ref = version or (f"@{alias}")
        parent = resolve_parent(registry, ref, Path(tmp) / "parent")
        if parent is None:
            raise ValueError(f"no version at models:/{model_name}@{alias}: train one first")

        def build(base: Parent | None) -> tuple[VersionFiles, str | None, dict[str, str]]:
            snap = derive(base, change="calendar", calendar=calendar, calendar_source=source,
                          keep_unknown=keep_unknown, reason=f"calendar push ({source})")
            return snap, alias if move_alias else None, {}

        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout is for --json
            landed = land(registry, build, parent, follow=None if version else alias,
                          params={"calendar_push": "true"})
    table = landed.snapshot.table
    held = set(table.store_id.tolist())
    rows = calendar[calendar["Store"].isin(held)]
    pending = sorted(set(calendar["Store"].tolist()) - held, key=store_sort_key)
    return Pushed(version=landed.registered.version, parent_version=landed.parent.version,
                  model_uri=landed.registered.model_uri, stores=len(table), stores_changed=int(rows["Store"].nunique()),
                  days=len(rows), calendar_end=landed.snapshot.lineage["calendar_end"],
                  seconds=time.perf_counter() - t0, retries=landed.retries, pending=pending)


def main_push(path: str, **kwargs: Any) -> dict[str, Any]:
    """Read ``path`` and push it; the answer as a JSON-ready dict (CLI and retrain service)."""
    from pipelines.data.calendar import read_calendar

    pushed = push(read_calendar(Path(path)), **{"source": f"file {Path(path).name}", **kwargs})
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in pushed.__dict__.items()}


def event_ref(data: Any) -> str:
    """The calendar a ``com.storecast.calendar.updated`` event names (``data.calendar``); ``BadEvent`` naming
    the field otherwise, and for ``data.path`` (a path on the server is never read)."""
    if isinstance(data, dict) and "path" in data:
        raise BadEvent("data.path: not accepted: a calendar update names a calendar held in the sales store, not a "
                       "path on the server; upload it (storecast calendar upload FILE --sales STORE) and send its "
                       "reference as data.calendar")
    ref = data.get("calendar") if isinstance(data, dict) else None
    if not isinstance(ref, str) or not ref.strip():
        raise BadEvent("data.calendar: expected the reference of a calendar in the sales store (storecast calendar "
                       "upload prints it)")
    return ref.strip()


def push_ref(sales: Any, ref: str, *, dry_run: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Calendar ``ref`` of the sales store ``sales`` (a ``SalesStore``), read through its bounded reader, pushed
    onto the champion (``push``'s ``kwargs``); with ``dry_run`` only read, and what it would do said.

    ``ValueError`` (400) naming ``data.calendar`` for a ref that is not allowed, not a calendar, or names stores
    the version does not hold (the message never quotes the calendar's contents); ``SalesUnavailable`` when the
    store cannot be read now; anything else is the registry's.
    """
    try:
        frame = sales.read_calendar(ref)  # CalendarRefused (a ValueError) never quotes the contents
    except ValueError as exc:
        raise ValueError(f"data.calendar: {exc}") from None
    if dry_run:
        return {"dry_run": True, "would": f"register the champion again with calendar {ref} ({len(frame)} rows) and "
                                          "move champion"}
    try:
        pushed = push(frame, alias="champion", source=ref, **kwargs)
    except ValueError as exc:  # stores the version does not hold, or nothing to push: named, nothing registered
        raise ValueError(f"data.calendar {ref}: {exc}") from None
    return {"calendar": ref, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(pushed).items()}}
