"""KServe's data plane with what the Open Inference Protocol promises and KServe leaves out.

- model metadata from the model (``platform``, inputs, outputs, ``versions``), server metadata with
  the extensions actually served;
- versions addressable: :meth:`ServingDataPlane.check_version` answers 404 naming the served
  version for any other; a model whose versions live downstream (the transformer) says ``None`` and
  passes the requested version on;
- readiness: a model's probes ask its ``healthy()`` (the transformer's holds only while its predictors
  answer ready), inference its own ``ready``; ``/v2/health/ready`` only when every registered model is ready;
- V1 decoding: CloudEvents checked first (``serving.cloudevents``), a structured event without
  ``time`` unwrapped, anything KServe's decoder trips over answered 400, never 500.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from importlib import metadata as distribution
from typing import Any

import orjson
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from serving import cloudevents
from serving.errors import ClientError, NotFound, ServingError, Unavailable

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def _version() -> str:
    try:
        return distribution.version("storecast")
    except distribution.PackageNotFoundError:  # a source checkout that is not installed
        return "0+source"


class ServingDataPlane(DataPlane):
    """The data plane both storecast servers use."""

    def __init__(self, model_registry: Any, server_name: str, event_types: Sequence[str] | None = None) -> None:
        super().__init__(model_registry=model_registry)
        self._server_name = server_name
        self._server_version = _version()
        self.event_types = tuple(event_types) if event_types else None

    def metadata(self) -> dict[str, Any]:
        return {"name": self._server_name, "version": self._server_version, "extensions": list(EXTENSIONS)}

    def model(self, name: str) -> Any:
        """The registered model (404 naming the served ones otherwise)."""
        model = self.model_registry.get_model(name)
        if model is None:
            served = ", ".join(sorted(self.model_registry.get_models())) or "none"
            raise NotFound(f"model {name[:64]!r} is not served here; the models are: {served}")
        return model

    def check_version(self, name: str, version: str | None, infer: bool = False) -> str | None:
        """The requested version if this server can answer it (404 naming the served one otherwise).

        A model whose versions live downstream (``served_versions()`` is None: the transformer) passes an
        inference request on (the predictor checks it) and answers metadata and readiness from the
        versions it has seen (``known_versions()``)."""
        if not version:
            return None
        model = self.model(name)
        versions = model.served_versions() if hasattr(model, "served_versions") else []
        if versions is None:
            if infer:
                return version
            versions = model.known_versions() if hasattr(model, "known_versions") else []
        if not versions:
            raise Unavailable(f"model {name} has no version loaded yet")
        if version not in versions:
            raise NotFound(f"model {name} version {version[:64]!r} is not served; "
                           f"the served version is {', '.join(versions)}")
        return version

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        model = self.model(model_name)
        if hasattr(model, "metadata"):
            return model.metadata()
        return await super().model_metadata(model_name)

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False) -> bool:
        """A probe: the model's ``healthy()`` (the transformer's waits for its predictors). Inference
        (``disable_predictor_health_check``): the model's own ``ready`` only, so a transformer's request still
        goes to its predictors and one that is down is named in the 503."""
        model = self.model(model_name)
        if disable_predictor_health_check:
            return bool(getattr(model, "ready", False))
        return bool(await model.healthy())

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        if not models:
            return False
        for model in models.values():
            if not await model.healthy():
                return False
        return await super().ready()

    def decode(self, body: Any, headers: Any, protocol_version: str = "v1", model_name: str | None = None) -> Any:
        headers = headers or {}
        if cloudevents.is_binary(headers):
            cloudevents.check_binary(headers, self.event_types)
        elif cloudevents.is_structured(headers):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ClientError(f"structured CloudEvent is not JSON: {str(exc)[:120]}") from None
            doc = cloudevents.check_structured(doc, self.event_types)
            if "time" not in doc:  # KServe unwraps only events that carry one (optional in CloudEvents 1.0)
                return _data(doc), {k: v for k, v in doc.items() if k not in ("data", "data_base64")}
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except (ServingError, RecursionError):
            raise
        except Exception as exc:
            from kserve.errors import InvalidInput

            if isinstance(exc, InvalidInput):
                raise
            raise ClientError(f"request body could not be read: {type(exc).__name__}: {str(exc)[:120]}") from None


def _data(doc: dict[str, Any]) -> Any:
    if "data" in doc:
        return doc["data"]
    import base64

    try:
        return orjson.loads(base64.b64decode(doc["data_base64"], validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise ClientError("CloudEvent data_base64 is not base64 of a JSON request") from None


class ServingRepositoryExtension(ModelRepositoryExtension):
    """KServe's repository extension with an unknown model answered 404 (KServe says 503 "not ready")."""

    async def load(self, model_name: str) -> None:
        known = getattr(self._model_registry, "_known", {})  # predictor.repository remembers unloaded models
        if self._model_registry.get_model(model_name) is None and model_name not in known:
            raise NotFound(f"model {model_name[:64]!r} is not served here")
        await self._call("load", model_name)

    async def unload(self, model_name: str) -> None:
        if self._model_registry.get_model(model_name) is None:
            raise NotFound(f"model {model_name[:64]!r} is not served here")
        await super().unload(model_name)

    async def _call(self, verb: str, name: str) -> None:
        from kserve.errors import ModelNotFound

        try:
            result = getattr(self._model_registry, verb)(name)
            if inspect.isawaitable(result):
                result = await result
        except ModelNotFound:
            raise NotFound(f"model {name[:64]!r} is not served here") from None
        except ServingError:
            raise
        except Exception as exc:
            raise Unavailable(f"model {name} could not be {verb}ed: {type(exc).__name__}: {str(exc)[:200]}") from None
