"""The door: one hook, called for every request on REST and gRPC, before any work is done.

A door sees a :class:`Call` (protocol, route, kind, headers or metadata, peer) and either admits it,
returning the principal it stands for (anything, ``None`` for anonymous), or refuses it by raising
:class:`~serving.errors.Refused` (status 401, 403, 429, ... with headers such as ``Retry-After`` or
``WWW-Authenticate``; on gRPC the matching status code with the headers as trailing metadata). The
admitted principal is available to the model code through :func:`principal` for the rest of the
request (a context variable), and each door's optional ``finished(call, principal, status)`` is called
once the answer is known (for audit logs).

Doors are built per component by :func:`build_doors`, from the ``--doors`` setting
(``STORECAST_DOORS``): comma-separated ``module:factory`` names, each factory called with the
component's settings and returning a door (or ``None`` to stay out). Authentication and rate limits
are installed here, once, for both protocols.
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

KINDS = ("infer", "metadata", "health", "repository", "metrics", "other")

_principal: contextvars.ContextVar[Any] = contextvars.ContextVar("storecast_principal", default=None)


@dataclass(frozen=True)
class Call:
    """What a door knows of a request before it is read.

    ``route`` is the HTTP path (``/v1/models/storecast:predict``) or the gRPC method
    (``/inference.GRPCInferenceService/ModelInfer``); ``kind`` classifies it (``infer``, ``metadata``,
    ``health``, ``repository``, ``metrics``, ``other``); ``headers`` are lower-case names (gRPC
    metadata); ``peer`` is ``host:port`` of the client as the server sees it.
    """

    protocol: str  # "http" | "grpc"
    method: str  # HTTP method; "POST" for gRPC
    route: str
    kind: str
    headers: Mapping[str, str]
    peer: str
    model: str | None = None
    component: str = ""


@runtime_checkable
class Door(Protocol):
    """Admit a call (return its principal) or refuse it (raise ``serving.errors.Refused``)."""

    async def admit(self, call: Call) -> Any: ...


class Doors:
    """The doors of a server, asked in order; the first principal that is not None is the call's."""

    def __init__(self, doors: Sequence[Door] = ()) -> None:
        self.doors = [d for d in doors if d is not None]

    def __bool__(self) -> bool:
        return bool(self.doors)

    async def admit(self, call: Call) -> Any:
        found = None
        for door in self.doors:
            who = await door.admit(call)
            if found is None:
                found = who
        return found

    def finished(self, call: Call, who: Any, status: int) -> None:
        for door in self.doors:
            done = getattr(door, "finished", None)
            if done is not None:
                done(call, who, status)


def principal() -> Any:
    """The principal the doors admitted for the request being served (None: anonymous or no door)."""
    return _principal.get()


def set_principal(who: Any) -> contextvars.Token:
    return _principal.set(who)


def reset_principal(token: contextvars.Token) -> None:
    _principal.reset(token)


def classify_http(method: str, path: str) -> tuple[str, str | None]:
    """(kind, model name) of an HTTP route."""
    if path.startswith("/v1/models/") or path.startswith("/v2/models/"):
        rest = path[len("/v1/models/"):]
        name = rest.split("/", 1)[0].split(":", 1)[0] or None
        if method == "POST" and (path.endswith(":predict") or path.endswith(":explain") or path.endswith("/infer")):
            return "infer", name
        if path.endswith("/ready") or path.startswith("/v1/models/"):
            return "health", name
        return "metadata", name
    if path.startswith("/v2/repository"):
        return "repository", None
    if path.startswith("/v2/health") or path == "/":
        return "health", None
    if path == "/metrics":
        return "metrics", None
    if path in ("/v2", "/v2/models", "/v1/models"):
        return "metadata", None
    return "other", None


GRPC_KINDS = {"ModelInfer": "infer", "ModelStreamInfer": "infer", "ModelMetadata": "metadata",
              "ServerMetadata": "metadata", "ServerLive": "health", "ServerReady": "health", "ModelReady": "health",
              "RepositoryModelLoad": "repository", "RepositoryModelUnload": "repository"}


def classify_grpc(method: str) -> str:
    return GRPC_KINDS.get(method.rsplit("/", 1)[-1], "other")


def build_doors(spec: str, settings: Any) -> Doors:
    """Doors from ``module:factory`` names (comma-separated); each factory gets the settings."""
    doors = []
    for name in (s.strip() for s in (spec or "").split(",")):
        if not name:
            continue
        module, _, attr = name.partition(":")
        if not attr:
            raise ValueError(f"door {name!r}: expected module:factory")
        factory = getattr(importlib.import_module(module), attr)
        door = factory(settings)
        if door is not None:
            if not hasattr(door, "admit"):
                raise TypeError(f"door {name!r}: {type(door).__name__} has no admit(call)")
            doors.append(door)
    return Doors(doors)
