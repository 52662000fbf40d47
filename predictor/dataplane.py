"""KServe's data plane with the served version in the V2 model metadata and model-aware readiness.

- ``GET /v2/models/<name>`` adds ``versions: [<version being served>]`` (a field of the Open
  Inference Protocol's metadata response that KServe leaves empty).
- ``GET /v2/health/ready`` is true only when every registered model is ready, so a server-level
  probe does not route traffic to a predictor that is still loading its version.
"""

from __future__ import annotations

from typing import Any

from kserve.protocol.dataplane import DataPlane


class VersionedDataPlane(DataPlane):
    """DataPlane reporting model versions and readiness."""

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        metadata = await super().model_metadata(model_name)
        version = getattr(self.get_model_from_registry(model_name), "version", None)
        if version is not None:
            metadata["versions"] = [str(version)]
        return metadata

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        if not models:
            return False
        for model in models.values():
            if not await model.healthy():
                return False
        return await super().ready()
