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
component's settings and returning a door (or ``None`` to stay out). A setting that leaves a server
with no door at all is refused (``ValueError``): a server is never open by omission. Authentication
and rate limits are installed here, once, for both protocols.
"""

from __future__ import annotations

import contextvars
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

KINDS = ("infer", "metadata", "health", "repository", "metrics", "other")
# the open model routes: V1 status, V2 readiness, matched whole (a Starlette route's "$" also matches before a
# trailing newline, so ":predict%0a" reaches predict: no prefix or suffix of a path proves it harmless)
MODEL_STATUS = re.compile(r"/v1/models/[^/:\s]+|/v2/models/[^/\s]+(/versions/[^/\s]+)?/ready")

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


def combined(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers (or gRPC metadata) as one mapping with lower-case names; a name sent twice is one value, joined
    with ", " as HTTP combines fields: two keys are no key (401), never the first or the last one sent."""
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


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
        if method == "POST":  # predict, explain, infer, generate, or no route at all
            return "infer", name
        if method in ("GET", "HEAD") and MODEL_STATUS.fullmatch(path):
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
              "RepositoryModelLoad": "repository", "RepositoryModelUnload": "repository",
              "RepositoryIndex": "repository"}


def classify_grpc(method: str) -> str:
    return GRPC_KINDS.get(method.rsplit("/", 1)[-1], "other")


def build_doors(spec: str, settings: Any) -> Doors:
    """Doors from ``module:factory`` names (comma-separated); each factory gets the settings. ``ValueError``
    (one line, naming the door) when a name cannot be imported, is not a door, or no door results."""
    doors = []
    for name in (s.strip() for s in (spec or "").split(",")):
        if not name:
            continue
        module, _, attr = name.partition(":")
        if not attr:
            raise ValueError(f"--doors: {name!r}: expected module:factory, e.g. serving.access.door:door")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ValueError(f"--doors: {name!r}: cannot import {module!r} ({exc})") from None
        except AttributeError:
            raise ValueError(f"--doors: {name!r}: {module!r} has no {attr!r}") from None
        door = factory(settings)
        if door is not None:
            if not hasattr(door, "admit"):
                raise ValueError(f"--doors: {name!r}: {type(door).__name__} has no admit(call)")
            doors.append(door)
    if not doors:
        raise ValueError(f"--doors {spec!r}: no door, so every caller could do everything; name one, e.g. "
                         "serving.access.door:door (without --auth-file: open on loopback, no admin)")
    return Doors(doors)
