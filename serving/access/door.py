"""The access mechanism as a door of the serving layer: ``--doors serving.access.door:door``, both servers' default.

The serving layer (``serving.access.hook``) asks its doors about every call, REST and gRPC alike, before any
work. This door authenticates the call (``x-api-key`` / ``authorization: Bearer`` key or OIDC token),
checks the permission its kind needs (``infer`` and ``metadata``: ``forecast``; ``repository`` (load, unload,
index): ``admin``, which no caller has without an auth file; health, readiness and metrics stay open; the
retrain service's routes by ``serving.access.asgi.retrain_rules``), counts the rate limit and takes a
concurrency slot, or refuses with
``serving.errors.Refused`` (401 / 403 / 429 with ``Retry-After``, ``RateLimit-Policy`` and ``RateLimit``,
which the layer sends as HTTP headers or gRPC trailing metadata). A caller refused for its rate limit is
noted in the door's ``gate`` (``serving.access.fastpath.FastGate``): until its window frees a slot, the
protocol answers it a pre-built 429 before any work, and names callers for the per-caller in-flight bound
(``serving.shedding``). The principal it admits has
``headers()`` (the rate-limit headers of the answer), ``identity``, ``require(permission)`` for a
permission known only once the request is read, and ``note_rows(n)`` for the audit line, which
``finished`` writes.
"""

from __future__ import annotations

from typing import Any

from serving.access.admission import Access, AccessError, Admission, Identity
from serving.access.asgi import OPEN, retrain_rules
from serving.access.auth_file import ADMIN
from serving.access.fastpath import FastGate
from serving.access.settings import AccessSettings, build_access, check_exposure

KIND_PERMISSION = {"infer": "forecast", "metadata": "forecast", "other": "forecast", "repository": ADMIN,
                   "health": OPEN, "metrics": OPEN}


def refused(exc: AccessError) -> Exception:
    """The serving layer's ``Refused`` for an access refusal (its headers, its gRPC metadata)."""
    from serving.errors import Refused

    headers = {k.lower(): v for k, v in exc.http_headers() if k.lower() != "content-type"}  # the layer's spelling
    return Refused(exc.status, exc.message, headers)  # gRPC: the same as trailing metadata, + retry pushback


class Principal:
    """What the door admitted: the identity, the answer's rate-limit headers, late permission checks."""

    __slots__ = ("admission",)

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    @property
    def identity(self) -> Identity:
        return self.admission.identity

    @property
    def name(self) -> str:
        return self.admission.identity.name

    def headers(self) -> list[tuple[str, str]]:
        return self.admission.headers()

    def require(self, permission: str) -> None:
        try:
            self.admission.require(permission)
        except AccessError as exc:
            raise refused(exc) from None

    def note_rows(self, n: int) -> None:
        self.admission.note_rows(n)


class AccessDoor:
    """A ``serving.access.hook.Door`` over one ``Access``."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.gate = FastGate(access)  # the protocol's cheap look at the caller (serving.shedding, serving.grpc_server)

    @staticmethod
    def permission(call: Any) -> str | None:
        if call.component == "retrain":
            return retrain_rules(call.method, call.route)
        return KIND_PERMISSION.get(call.kind, "forecast")

    async def admit(self, call: Any) -> Principal | None:
        rule = self.permission(call)
        if rule == OPEN:
            return None
        protocol = "rest" if call.protocol == "http" else call.protocol
        try:
            admission = await self.access.admit(call.headers, call.peer, route=call.route, protocol=protocol,
                                                permission=rule)
        except AccessError as exc:
            if exc.reason == "rate_limited":  # every request of the caller is refused until its window frees a slot
                self.gate.note(exc.identity, exc.decision, exc.message)
            raise refused(exc) from None
        return Principal(admission)

    def finished(self, call: Any, who: Any, status: int) -> None:
        if isinstance(who, Principal):
            who.admission.finish(status)


def door(settings: Any) -> AccessDoor:
    """The factory ``--doors`` names: access settings from the server's parsed flags (when it added
    ``serving.access.settings.add_access_arguments``) or the ``STORECAST_*`` environment; refuses
    (``ValueError``) to run without an auth file on anything but loopback. Without an auth file (on loopback)
    every caller is anonymous with every permission but ``admin``; only requests addressed to a loopback name
    and sent by no page of another site are answered (``serving.http``)."""
    access_settings = AccessSettings.of(settings)
    check_exposure(access_settings, getattr(settings, "host", "127.0.0.1"))
    return AccessDoor(build_access(access_settings))
