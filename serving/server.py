"""The one start-up of both servers: settings parsed, the ModelServer built, REST and gRPC started.

``python -m predictor`` and ``python -m transformer`` each describe themselves as a
:class:`Component` (name, settings class, KServe flag defaults, accepted CloudEvent types, default
doors) and call :func:`parse` then :func:`serve`. :func:`build_server` makes KServe's ``ModelServer``
with its two servers replaced by ours (``serving.rest.RestServer``, ``serving.grpc_server.GrpcServer``):
both listen on ``--host``, share one in-flight bound and one set of doors, map errors the same way,
write the same access-log line and count the same metrics.

Closed by default, the same way for both: ``--host`` is loopback unless given, neither listens beyond
loopback without an auth file (``serving.access.settings.check_exposure``), a ``--doors`` value that
leaves no door is refused, and the default door is the access door (``serving.access.door:door``).
Without an auth file (loopback) every caller is anonymous with every permission but ``admin`` (the
model repository), and the REST front answers only requests addressed to a loopback name that no
page of another site sent (``serving.http``). A bad setting found at start-up is one line on stderr
and exit status 1 (:func:`starting`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.logs import configure_logging
from serving.settings import ServerSettings, build_parser

log = logging.getLogger("storecast.server")


@dataclass(frozen=True)
class Component:
    """What a server is: its name, settings, KServe defaults, CloudEvent types and default doors."""

    name: str  # "predictor" | "transformer"
    settings: type[ServerSettings]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # KServe flags with our defaults
    event_types: tuple[str, ...] | None = None
    doors: str = ""  # the default of --doors

    @property
    def prog(self) -> str:
        return f"python -m {self.name}"

    def parser(self, kserve_parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        parser = build_parser(self.settings, self.prog, self.description, f"storecast {self.name}",
                              {"doors": self.doors, **self.defaults}, kserve_parser)
        from serving.access.settings import add_access_arguments  # the access door's flags (issue 13)

        add_access_arguments(parser)
        return parser


@contextlib.contextmanager
def starting(component: Component) -> Iterator[None]:
    """Start-up work where a bad setting (``ValueError``, an unreadable file's ``OSError``) is the user's to
    fix: one line on stderr naming it (``python -m predictor: error: ...``), exit status 1, no traceback."""
    try:
        yield
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{component.prog}: error: {' '.join(str(exc).split())[:2000]}") from None


def parse(component: Component, argv: Sequence[str] | None = None) -> ServerSettings:
    """The component's settings from the command line and ``STORECAST_*`` (imports KServe)."""
    with starting(component):
        args = component.parser().parse_args(sys.argv[1:] if argv is None else list(argv))
        return component.settings.from_args(args)


def build_doors(component: Component, settings: ServerSettings) -> tuple[Any, bool]:
    """The server's doors and whether it runs open (no auth file: loopback only); ``ValueError`` when it
    would listen beyond loopback without an auth file or ``--doors`` leaves no door."""
    from serving.access import hook
    from serving.access.settings import AccessSettings, check_exposure

    access = AccessSettings.of(settings)
    check_exposure(access, settings.host)
    return hook.build_doors(settings.doors, settings), access.open


def serve(component: Component, settings: ServerSettings, models: Sequence[Any], repository: Any = None,
          start: Sequence[Any] = ()) -> None:
    """Build the server, register ``models`` (ready or not: readiness is per model) and serve until stopped."""
    from serving import eventloop
    from serving.budget import SWITCH_SECONDS
    from serving.metrics import Meter
    from serving.shedding import LoadShedder

    configure_logging()
    _quiet_warnings()
    sys.setswitchinterval(SWITCH_SECONDS)  # large requests' work runs in the bulk thread (serving.budget)
    meter = Meter(component.name)
    with starting(component):
        doors, local_only = build_doors(component, settings)
    shedder = LoadShedder(None, settings.max_inflight) if settings.max_inflight > 0 else None
    server = build_server(component, settings, meter, doors, shedder, repository, local_only)
    for model in models:
        server.register_model(model)
        model.enable_latency_logging = server.enable_latency_logging
        if hasattr(model, "attach"):
            model.attach(meter)
    for thing in (*models, *start):
        thing.start()
    eventloop.install(settings.kserve.get("event_loop", "auto"))
    gc.collect()
    gc.freeze()  # what start-up made is never collected: a large answer's collections scan only new objects
    server.run()


def _quiet_warnings() -> None:
    """KServe's V1 path uses FastAPI's deprecated ORJSONResponse: one warning per process, not ours to fix."""
    import warnings

    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")


def build_server(component: Component, settings: ServerSettings, meter: Any, doors: Any, shedder: Any,
                 repository: Any = None, local_only: bool = False) -> Any:
    """KServe's ModelServer, built from the settings, with our REST and gRPC servers (``local_only``: the REST
    front answers only requests addressed to a loopback name)."""
    return _server_class()(component, settings, meter, doors, shedder, repository, local_only)


@functools.cache
def _server_class() -> type:
    """The ModelServer subclass (made on first use: KServe is imported late)."""
    from kserve import ModelServer
    from kserve.model_repository import ModelRepository
    from kserve.predictor_config import PredictorConfig
    from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess

    from serving.dataplane import ServingDataPlane, ServingRepositoryExtension
    from serving.grpc_server import GrpcServer, Guard
    from serving.rest import RestServer

    class StorecastServer(ModelServer):
        def __init__(self, component: Component, settings: ServerSettings, meter: Any, doors: Any, shedder: Any,
                     repository: Any = None, local_only: bool = False) -> None:
            k = settings.kserve
            names = ("http_port", "grpc_port", "workers", "max_threads", "max_asyncio_workers", "enable_grpc",
                     "enable_docs_url", "enable_latency_logging", "event_loop", "timeout_keep_alive", "ssl_certfile",
                     "ssl_keyfile")
            config = PredictorConfig(
                k.get("predictor_host"), k.get("predictor_protocol", "v1"), k.get("predictor_use_ssl", False),
                k.get("predictor_request_timeout_seconds", 600), k.get("predictor_request_retries", 0),
                k.get("enable_predictor_health_check", False))
            super().__init__(registered_models=repository or ModelRepository(), predictor_config=config,
                             **{n: k[n] for n in names if n in k})
            self.component, self.settings, self.meter, self.doors, self.shedder = (
                component, settings, meter, doors, shedder)
            self.local_only = local_only
            self.dataplane = ServingDataPlane(self.registered_models, f"storecast-{component.name}",
                                              component.event_types)
            self.model_repository_extension = ServingRepositoryExtension(self.registered_models)

        def _rest(self) -> Any:
            s = self.settings
            front = {"component": self.component.name, "meter": self.meter, "doors": self.doors,
                     "shedder": self.shedder, "max_body": s.max_body_bytes, "log_requests": s.access_log,
                     "local_only": self.local_only}
            return RestServer("kserve.model_server:app", self.dataplane, self.model_repository_extension,
                              self.http_port, workers=self.workers, grace_period=self.grace_period,
                              event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
                              ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile, host=s.host, front=front)

        def run(self) -> None:
            if self.workers > 1:
                self._rest_multiprocess_server = RESTServerMultiProcess(
                    "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
                    workers=self.workers, grace_period=self.grace_period, event_loop=self.event_loop,
                    timeout_keep_alive=self.timeout_keep_alive)
                self._rest_multiprocess_server._rest_server = self._rest()
                self.servers.append(self._rest_multiprocess_server.start())
            else:
                self._rest_server = self._rest()
                self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                guard = Guard(self.component.name, self.meter, self.doors, self.shedder, self.settings.access_log)
                self._grpc_server = GrpcServer(self.grpc_port, self.settings.host, self.dataplane,
                                               self.model_repository_extension, guard, self.settings.max_body_bytes,
                                               self.grace_period)
                self.servers.append(self._grpc_server.start(self.max_threads))
            log.info("%s: HTTP on %s:%d%s", self.component.name, self.settings.host, self.http_port,
                     f", gRPC on {self.settings.host}:{self.grpc_port}" if self.enable_grpc else "")
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

        def start(self, models: list[Any]) -> None:  # KServe's entry point, kept working
            for model in models:
                self.register_model(model)
            self.run()

    return StorecastServer
