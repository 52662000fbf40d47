"""The auth file: tiers, identities and the ``anonymous`` tier, parsed and checked (``--auth-file``).

YAML (documented example: ``config/auth.example.yaml``)::

    tiers:
      anonymous: {requests_per_second: 1, burst: 5, concurrent: 2, permissions: [forecast]}
      planner:   {requests_per_second: 20, burst: 40, concurrent: 8, permissions: [forecast, refresh]}
    identities:
      - name: alice
        tier: planner
        key_sha256: 3b0c...          # sha256 hex of the key; the key itself is never stored
      - name: broker-forecast
        tier: service
        oidc_subject: system:serviceaccount:storecast:storecast-forecast-requested-oidc-eventing.knative.dev-trigger

Permissions: ``forecast`` (inference and metadata), ``refresh`` (a few named stores), ``retrain`` (fleet-wide),
``rollout`` (canaries), ``admin`` (the model repository: ``/v2/repository/models/{m}/load`` and ``unload``,
``/v2/repository/index``, gRPC ``RepositoryModelLoad`` / ``Unload``; the retrain service's and the local
rollout's reloads).

A tier's rate limit is a moving window: at most ``burst`` requests in any ``burst / requests_per_second``
seconds (rounded to whole seconds, at least one), so the long-run rate is ``requests_per_second`` and a
client may spend its ``burst`` at once. ``null`` means no limit. Without an ``anonymous`` tier, requests
without credentials are refused (401). Every error names the file, the field and the problem.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PERMISSIONS = ("forecast", "refresh", "retrain", "rollout", "admin")
ADMIN = "admin"  # never granted without an auth file (``open_config``)
ANONYMOUS = "anonymous"
TIER_KEYS = {"requests_per_second", "burst", "concurrent", "permissions", "description"}
IDENTITY_KEYS = {"name", "tier", "key_sha256", "oidc_subject", "description"}
TOP_KEYS = {"version", "tiers", "identities"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")


class AuthFileError(ValueError):
    """The auth file cannot be used; the message names the file, the field and the problem."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a key, as the auth file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tier:
    """What a class of callers may do, and how much."""

    name: str
    requests_per_second: float | None  # None: no rate limit
    burst: int | None
    concurrent: int | None  # None: no concurrency bulkhead
    permissions: frozenset[str]

    @functools.cached_property
    def window_seconds(self) -> int:
        """The moving window (whole seconds) that holds ``quota`` requests."""
        if self.requests_per_second is None or self.burst is None:
            return 0
        return max(1, round(self.burst / self.requests_per_second))

    @functools.cached_property
    def quota(self) -> int:
        """Requests admitted in any window of ``window_seconds``: the long-run rate times the window."""
        if self.requests_per_second is None:
            return 0
        return max(1, round(self.requests_per_second * self.window_seconds))


@dataclass(frozen=True)
class IdentityEntry:
    """One caller of the auth file: by key hash(es) and/or OIDC subject(s)."""

    name: str
    tier: str
    key_sha256: tuple[bytes, ...] = ()
    oidc_subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthConfig:
    """A parsed, consistent auth file."""

    tiers: Mapping[str, Tier]
    identities: tuple[IdentityEntry, ...]
    source: str = "<built-in>"
    by_subject: Mapping[str, IdentityEntry] = field(default_factory=dict)

    @property
    def anonymous(self) -> Tier | None:
        return self.tiers.get(ANONYMOUS)

    def tier_of(self, entry: IdentityEntry) -> Tier:
        return self.tiers[entry.tier]

    def summary(self) -> str:
        """One line for the log: tiers with their limits, identity count (never a key)."""
        parts = []
        for t in self.tiers.values():
            limit = f"{t.quota}/{t.window_seconds}s" if t.requests_per_second is not None else "no rate limit"
            parts.append(f"{t.name} ({limit}, {t.concurrent or 'any'} concurrent, {','.join(sorted(t.permissions))})")
        anon = "" if ANONYMOUS in self.tiers else "; anonymous denied"
        return f"{self.source}: {len(self.identities)} identities; tiers " + "; ".join(parts) + anon


def open_config() -> AuthConfig:
    """The configuration without an auth file: every caller is anonymous with every permission but ``admin``,
    no limit.

    For loopback development only: ``serving.access.settings.check_exposure`` refuses it on other addresses, and
    ``serving.access.admission.Access`` answers it only requests addressed to a loopback name, never a cross-site
    one. The model repository (``admin``: load, unload, index) needs an identity of an auth file, so an open
    local stack cannot be made to unload its model by a page in a browser.
    """
    tier = Tier(ANONYMOUS, None, None, None, frozenset(PERMISSIONS) - {ADMIN})
    return AuthConfig({ANONYMOUS: tier}, (), source="no --auth-file (open, loopback only)")


def load(path: str | Path) -> AuthConfig:
    """Read and check an auth file; ``AuthFileError`` with a clear message when it is unusable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuthFileError(f"{path}: cannot read the auth file: {exc.strerror or exc}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<auth file>") -> AuthConfig:
    """Parse the YAML text of an auth file (see the module docstring)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AuthFileError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise AuthFileError(f"{source}: expected a mapping with 'tiers' and 'identities', got {_kind(doc)}")
    _no_unknown(doc, TOP_KEYS, source, "")
    if doc.get("version", 1) != 1:
        raise AuthFileError(f"{source}: version: only version 1 is known, got {doc['version']!r}")
    tiers_doc = doc.get("tiers")
    if not isinstance(tiers_doc, dict) or not tiers_doc:
        raise AuthFileError(f"{source}: tiers: expected a mapping of tier name to its limits, got {_kind(tiers_doc)}")
    tiers = {str(name): _tier(str(name), spec, source) for name, spec in tiers_doc.items()}
    ids_doc = doc.get("identities") or []
    if not isinstance(ids_doc, list):
        raise AuthFileError(f"{source}: identities: expected a list, got {_kind(ids_doc)}")
    identities = tuple(_identity(i, entry, tiers, source) for i, entry in enumerate(ids_doc))
    _unique(identities, source)
    by_subject = {s: e for e in identities for s in e.oidc_subjects}
    return AuthConfig(tiers, identities, source, by_subject)


def _tier(name: str, spec: Any, source: str) -> Tier:
    where = f"tiers.{name}"
    if not NAME.fullmatch(name):
        raise AuthFileError(f"{source}: {where}: a tier name is letters, digits and ._:@- (at most 128)")
    if not isinstance(spec, dict):
        raise AuthFileError(f"{source}: {where}: expected a mapping (requests_per_second, burst, concurrent, "
                            f"permissions), got {_kind(spec)}")
    _no_unknown(spec, TIER_KEYS, source, where)
    for required in ("requests_per_second", "concurrent", "permissions"):
        if required not in spec:
            raise AuthFileError(f"{source}: {where}.{required}: missing (use null for no limit)"
                                if required != "permissions" else f"{source}: {where}.permissions: missing")
    rps = spec["requests_per_second"]
    if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float) or not rps > 0
                            or not math.isfinite(rps)):
        raise AuthFileError(f"{source}: {where}.requests_per_second: expected a number > 0 or null, got {rps!r}")
    burst = spec.get("burst", None if rps is None else max(1, math.ceil(rps)))
    if rps is None and burst is not None:
        raise AuthFileError(f"{source}: {where}.burst: needs requests_per_second (it is null)")
    if burst is not None and not _positive_int(burst):
        raise AuthFileError(f"{source}: {where}.burst: expected a whole number > 0, got {burst!r}")
    concurrent = spec["concurrent"]
    if concurrent is not None and not _positive_int(concurrent):
        raise AuthFileError(f"{source}: {where}.concurrent: expected a whole number > 0 or null, got {concurrent!r}")
    perms = spec["permissions"]
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise AuthFileError(f"{source}: {where}.permissions: expected a list out of {', '.join(PERMISSIONS)}")
    unknown = sorted(set(perms) - set(PERMISSIONS))
    if unknown:
        raise AuthFileError(f"{source}: {where}.permissions: unknown {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(PERMISSIONS)}")
    return Tier(name, None if rps is None else float(rps), burst, concurrent, frozenset(perms))


def _identity(i: int, entry: Any, tiers: Mapping[str, Tier], source: str) -> IdentityEntry:
    where = f"identities[{i}]"
    if not isinstance(entry, dict):
        raise AuthFileError(f"{source}: {where}: expected a mapping with name, tier and key_sha256 or "
                            f"oidc_subject, got {_kind(entry)}")
    _no_unknown(entry, IDENTITY_KEYS, source, where)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AuthFileError(f"{source}: {where}.name: expected letters, digits and ._:@- (at most 128), got {name!r}")
    where = f"{where} ({name})"
    if name == ANONYMOUS:
        raise AuthFileError(f"{source}: {where}.name: 'anonymous' is reserved for callers without credentials")
    tier = entry.get("tier")
    if tier not in tiers:
        raise AuthFileError(f"{source}: {where}.tier: unknown tier {tier!r}; tiers: {', '.join(tiers)}")
    if tier == ANONYMOUS:
        raise AuthFileError(f"{source}: {where}.tier: 'anonymous' is for callers without credentials")
    hashes = _strings(entry.get("key_sha256"), source, f"{where}.key_sha256")
    for h in hashes:
        if not SHA256.fullmatch(h):
            hint = " (that looks like a key, not its hash: never put keys in the file)" if len(h) != 64 else ""
            raise AuthFileError(f"{source}: {where}.key_sha256: expected 64 lower-case hex digits{hint}")
    subjects = _strings(entry.get("oidc_subject"), source, f"{where}.oidc_subject")
    if not hashes and not subjects:
        raise AuthFileError(f"{source}: {where}: give key_sha256 (storecast auth add-key) or oidc_subject")
    return IdentityEntry(name, tier, tuple(bytes.fromhex(h) for h in hashes), tuple(subjects))


def _unique(identities: tuple[IdentityEntry, ...], source: str) -> None:
    seen_names: set[str] = set()
    seen_keys: dict[bytes, str] = {}
    seen_subjects: dict[str, str] = {}
    for e in identities:
        if e.name in seen_names:
            raise AuthFileError(f"{source}: identities: the name {e.name!r} appears twice")
        seen_names.add(e.name)
        for h in e.key_sha256:
            if h in seen_keys:
                raise AuthFileError(f"{source}: identities: {e.name!r} and {seen_keys[h]!r} have the same key")
            seen_keys[h] = e.name
        for s in e.oidc_subjects:
            if s in seen_subjects:
                raise AuthFileError(f"{source}: identities: {e.name!r} and {seen_subjects[s]!r} have the same "
                                    f"oidc_subject {s!r}")
            seen_subjects[s] = e.name


def _strings(value: Any, source: str, where: str) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise AuthFileError(f"{source}: {where}: YAML read a number here: quote the value (\"...\")")
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise AuthFileError(f"{source}: {where}: expected a string or a list of strings")
    return [v.strip() for v in values]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _no_unknown(doc: dict, known: set[str], source: str, where: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise AuthFileError(f"{source}: {prefix}{unknown[0]}: unknown field; known: {', '.join(sorted(known))}")


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


class AuthFileWatcher:
    """The current configuration of an auth file, re-read when the file changes (Secret rotation).

    The check compares ``os.stat`` of the path (following symlinks, so the ``..data`` symlink swap of a
    Kubernetes Secret volume counts) by inode, device, size and mtime. A file that became unusable keeps
    the last good configuration in force; ``last_error`` says why. ``start()`` checks in a daemon
    thread every ``interval`` seconds, so requests never do file I/O.
    """

    def __init__(self, path: str | Path, interval: float = 2.0, on_change: Any = None) -> None:
        self.path, self.interval, self.on_change = Path(path), interval, on_change
        self.log = logging.getLogger("storecast.auth")
        self._signature = self._stat()
        self.config = load(self.path)  # the first load must succeed: a server does not start without it
        self.last_error: str | None = None
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)

    def check(self) -> bool:
        """Reload when the file changed; True when a new configuration is in force."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            config = load(self.path)
        except AuthFileError as exc:
            self.last_error = str(exc)
            self.log.error("auth file changed but cannot be used, keeping the previous one: %s", exc)
            return False
        self.config, self.last_error = config, None
        self.reloads += 1
        self.log.info("auth file reloaded: %s", config.summary())
        if self.on_change is not None:
            self.on_change(config)
        return True

    def start(self) -> AuthFileWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="auth-file-watcher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the watcher die: the next tick tries again
                self.log.exception("auth file check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
