"""The transformer's settings: each a flag (``--max-days``) and a variable (``STORECAST_MAX_DAYS``), defined once.

The transformer's own key for the predictors (its service identity, a mounted Secret) is read once at start by
:meth:`TransformerSettings.predictor_key`: the variable ``STORECAST_PREDICTOR_API_KEY`` (never a flag: argv is
visible to ``ps``) or the file of ``--predictor-api-key-file`` (``serving.access.key_file.read_key``).
:class:`Credential` is what every predictor call then carries (``transformer.shards``, ``transformer.ready``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.access.key_file import read_key
from serving.contract import FORECAST_REQUESTED, MODEL_NAME
from serving.server import Component
from serving.settings import ServerSettings, boolean, setting

PREDICTOR_KEY_ENV = "STORECAST_PREDICTOR_API_KEY"
MAX_FORWARDED = 8192  # longest caller authorization header forwarded


@dataclass(frozen=True)
class TransformerSettings(ServerSettings):
    """``python -m transformer`` (KServe's ModelServer flags besides: --predictor_host, --predictor_protocol, ...)."""

    shards: int = setting(1, "number of predictor shards (crc32(store_id) % N)", int)
    predictor_host_template: str | None = setting(None, "host of shard k, e.g. storecast-shard-{k}-predictor.storecast "
                                                  "(with --shards N > 1)")
    predictor_hosts: str | None = setting(None, "comma-separated host:port of every shard, in shard order "
                                          "(instead of a template)")
    max_days: int = setting(366, "longest window of one store in a request", int)
    max_stores: int = setting(2000, "most stores in one request", int)
    batch_rows: int = setting(50_000, "most store-days in one predictor call (bigger requests are split and sent "
                              "concurrently)", int)
    watch_seconds: float = setting(5.0, "ask every shard this often which version it serves, its data end and "
                                   "stores (metadata, metrics, the --max-days-ahead check; 0: never)", float)
    predictor_api_key_file: str | None = setting(None, "file holding the transformer's own key for the predictors "
                                                 "(a mounted Secret), read once at start and sent as x-api-key on "
                                                 "every predictor call; or the key itself in "
                                                 f"{PREDICTOR_KEY_ENV}")
    forward_authorization: bool = setting(False, "without a predictor key: forward each caller's authorization "
                                          "header to the predictors (as KServe's transformer does); the key wins "
                                          "when both are set", boolean)
    predictor_metadata: tuple[tuple[str, str], ...] = setting(
        (), "extra gRPC metadata (REST headers) on every predictor call, comma-separated key=value, e.g. "
        "seldon-model=storecast (Seldon Core 2's mesh routes on it)", lambda text: parse_metadata(text))

    def predictor_key(self) -> str | None:
        """The transformer's own key for the predictors (None: none given); ``SystemExit`` with one line when
        it cannot be used."""
        return read_key(os.environ.get(PREDICTOR_KEY_ENV), self.predictor_api_key_file, PREDICTOR_KEY_ENV,
                        "--predictor-api-key-file")

    def credential(self) -> Credential:
        """What the transformer shows its predictors (the key read now, once), with --predictor-metadata."""
        return Credential(self.predictor_key(), self.forward_authorization, self.predictor_metadata)


def parse_metadata(text: str | None) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` as gRPC metadata pairs (keys lower-case); a malformed item is named."""
    pairs = []
    for item in filter(None, (i.strip() for i in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value")
        pairs.append((key.strip().lower(), value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class Credential:
    """What the transformer shows a predictor: its own key, or (``forward``, no key) the caller's
    ``authorization`` header; neither: nothing (anonymous). The key never shows in a repr or a log."""

    key: str | None = field(default=None, repr=False)
    forward: bool = False
    extra: tuple[tuple[str, str], ...] = ()  # --predictor-metadata, on every call

    def headers(self, caller: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers (gRPC metadata) of a call made for ``caller``'s request (None: the transformer's own)."""
        return {**dict(self.extra), **self._credential(caller)}

    def _credential(self, caller: Mapping[str, str] | None) -> dict[str, str]:
        if self.key:
            return {"x-api-key": self.key}
        if self.forward and caller:
            auth = caller.get("authorization")
            if auth and len(auth) <= MAX_FORWARDED and auth.isascii() and auth.isprintable():
                return {"authorization": auth}
        return {}

    def metadata(self, caller: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...] | None:
        """``headers`` as gRPC metadata (None: none)."""
        return tuple(self.headers(caller).items()) or None

    def describe(self) -> str:
        """What predictor calls carry, for the start-up log (never the key)."""
        if self.key:
            return "the transformer's own key (x-api-key)" + (
                "; --forward-authorization ignored: the key wins" if self.forward else "")
        if self.forward:
            return "each caller's authorization header (the shard watch: none)"
        return "no credential: the predictors see the transformer as anonymous"


COMPONENT = Component(
    name="transformer", settings=TransformerSettings,
    description="The storecast business API: validates requests, splits them by shard, calls the predictors.",
    defaults={"model_name": MODEL_NAME, "predictor_protocol": "grpc-v2", "predictor_request_timeout_seconds": 10},
    event_types=(FORECAST_REQUESTED,), doors="serving.access.door:door",
)
