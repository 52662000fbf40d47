"""One error mapping for REST and gRPC.

Every failure a server answers is a :class:`Failure`: an HTTP status, the matching gRPC status
code, a message (the body is always ``{"error": message}``, plus optional extra fields) and
headers (``Retry-After``; on gRPC trailing metadata). :func:`failure_of` maps any exception:

=======================================  ======  ==================
what                                     HTTP    gRPC
=======================================  ======  ==================
a client mistake (KServe ``InvalidInput``)  400  INVALID_ARGUMENT
unknown model or version                    404  NOT_FOUND
body too large                              413  RESOURCE_EXHAUSTED
unsupported encoding / charset              415  INVALID_ARGUMENT
not loaded yet, shard down, overloaded      503  UNAVAILABLE (+ retry delay)
refused by a door (auth, rate limit)     401/403/429  UNAUTHENTICATED / PERMISSION_DENIED / RESOURCE_EXHAUSTED
anything else (a bug)                       500  INTERNAL
=======================================  ======  ==================

KServe is imported lazily: this module is usable (and tested) without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              405: "UNIMPLEMENTED", 409: "ABORTED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
              429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
MAX_MESSAGE = 2000  # characters of an error message (long lists of unknown stores are cut)


class ServingError(Exception):
    """Base of the errors the serving layer maps by their ``status``."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message, self.headers, self.extra = message, dict(headers or {}), extra

    def __str__(self) -> str:
        return self.message


class ClientError(ServingError):
    """The request is wrong: 400 / INVALID_ARGUMENT. The message names the field and the problem."""

    status = 400


class NotFound(ServingError):
    """Unknown model, version or route: 404 / NOT_FOUND."""

    status = 404


class TooLarge(ServingError):
    status = 413


class Unsupported(ServingError):
    """An encoding or charset the server does not read: 415."""

    status = 415


class Unavailable(ServingError):
    """Not ready, overloaded, or a dependency down: 503 / UNAVAILABLE with a retry delay."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, {"retry-after": str(retry_after)}, **extra)
        self.retry_after = retry_after


class Refused(ServingError):
    """A door refused the call (``status`` 401, 403, 429, ...); ``headers`` go with the answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message, headers, **extra)
        self.status = status


@dataclass(frozen=True)
class Failure:
    """An error answer, protocol neutral."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grpc_code(self) -> str:
        """The ``grpc.StatusCode`` name."""
        if self.status in GRPC_CODES:
            return GRPC_CODES[self.status]
        return "INVALID_ARGUMENT" if 400 <= self.status < 500 else "INTERNAL"

    @property
    def client(self) -> bool:
        return 400 <= self.status < 500

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def failure_of(exc: BaseException) -> Failure:
    """The answer to give for ``exc`` (KServe's own errors included)."""
    if isinstance(exc, ServingError):
        return Failure(exc.status, _cut(exc.message), exc.headers, exc.extra)
    try:
        from kserve import errors as k
    except ImportError:  # pragma: no cover - the servers always have KServe
        k = None
    if k is not None:
        if isinstance(exc, k.InvalidInput | k.UnsupportedProtocol):
            return Failure(400, _cut(str(exc.reason)))
        if isinstance(exc, k.ModelNotFound):
            return Failure(404, _cut(str(exc)))
        if isinstance(exc, k.ModelNotReady | k.ServerNotReady | k.ServerNotLive):
            return Failure(503, _cut(str(exc)), {"retry-after": "1"})
    if isinstance(exc, NotImplementedError):
        return Failure(501, _cut(str(exc) or "not implemented"))
    if isinstance(exc, RecursionError):  # a body nested deeper than anything sane
        return Failure(400, "request nested too deeply")
    return Failure(500, "internal error (the server log has the details)")


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 20] + " ... (message cut)"
