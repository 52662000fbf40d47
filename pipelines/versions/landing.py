"""Landing a derived version: register it, then move its alias compare-and-set.

``land(registry, build, parent)`` is the one way a version lands (``publish``, ``calendar_push``):
``build(parent)`` (a ``pipelines.versions.lineage.derive``) gives the version, the alias to move and its
tags. Writers compose (invariant 6 of ``pipelines.versions.lineage``): an alias moves only if it still
points at the version the new one was derived from (``Registry.move_alias``); otherwise the version is
tagged ``superseded``, derived again from the alias's new version (the fits are not redone) and
registered again, at most ``RETRIES`` times.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.versions.lineage import Parent, PublishError, resolve_parent
from pipelines.versions.registry import AliasMoved, Registered, Registry, VersionFiles, current_version

log = logging.getLogger("storecast.lineage")
RETRIES = 5  # times a writer derives again when another moved the alias first
BARRIER_ENV = "STORECAST_FAULT_ALIAS_BARRIER"  # "DIR:N" fault-injection hook, see ``_barrier``
BARRIER_SECONDS = 120.0


@dataclass
class Landed:
    """Where a derived version landed."""

    registered: Registered
    parent: Parent | None
    snapshot: VersionFiles
    alias: str | None  # the alias it moved (None: none)
    retries: int  # times it was derived again because another writer moved the alias first
    tags: dict[str, str]


Build = Callable[[Parent | None], tuple[VersionFiles, str | None, dict[str, str]]]


def land(registry: Registry, build: Build, parent: Parent | None, *, follow: str | None = None,
         retries: int = RETRIES, **register: Any) -> Landed:
    """Register ``build(parent)`` (snapshot, alias to move or None, extra tags) and move its alias compare-and-set.

    ``follow``: the alias ``parent`` was found by; if it moved since (a fit takes minutes) the version is
    derived from where it points now. The alias moves only if it still points at the version the new one
    was derived from (or, for another alias, where it pointed when the version was built); when another
    writer moved it first the version is tagged ``superseded``, derived again from the alias's new version
    and registered again, at most ``retries`` times. ``register``: ``Registry.register`` keywords.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if follow:
            now = current_version(registry.client, registry.model_name, follow)
            if now is not None and (parent is None or now != parent.version):
                parent = resolve_parent(registry, now, Path(tmp) / f"follow-{now}")
        for attempt in range(retries + 1):
            snap, target, tags = build(parent)
            if target is None:
                expected = None
            elif target == follow:
                expected = parent.version if parent is not None else None
            else:
                expected = current_version(registry.client, registry.model_name, target)
            reg = registry.register(snap, parent_version=parent.version if parent else "", tags=tags, **register)
            if target is None:
                return Landed(reg, parent, snap, None, attempt, tags)
            if attempt == 0:
                _barrier()
            try:
                registry.move_alias(target, reg.version, expected)
                return Landed(reg, parent, snap, target, attempt, tags)
            except AliasMoved as exc:
                registry.tag(reg.version, "superseded", f"alias {target} moved to {exc.current or 'nothing'} before "
                             f"this version could move it from {expected or 'nothing'}; derived again")
                log.warning("version %s: %s; deriving again from version %s", reg.version, exc, exc.current)
                if attempt == retries:
                    raise PublishError(f"alias {target} kept moving: gave up after {retries} retries") from exc
                if exc.current is not None:  # derive again from where the alias points now
                    parent = resolve_parent(registry, exc.current, Path(tmp) / f"retry-{attempt}-{exc.current}")
                follow = target if exc.current is not None else None
    raise AssertionError("unreachable")


def _barrier() -> None:
    """Fault-injection hook (tests of racing writers): with ``STORECAST_FAULT_ALIAS_BARRIER=DIR:N`` a writer
    about to move its alias for the first time leaves a file in DIR and waits (at most 120 s) until DIR
    holds N files, so N writers that derived from the same version move the alias at the same moment."""
    spec = os.environ.get(BARRIER_ENV, "")
    folder, _, count = spec.rpartition(":")
    if not folder or not count.isdigit():
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{os.getpid()}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + BARRIER_SECONDS
    while len(list(Path(folder).iterdir())) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)
