"""A KServe model repository whose load endpoint reloads: ``POST /v2/repository/models/<name>/load``.

KServe's own ``ModelRepository.load`` does nothing for models handed to the server in code, so the
repository extension would only report readiness. This one calls the model's ``load()`` (re-resolve
the model URI, swap if the version changed) in a worker thread, keeping the event loop serving, and
remembers unloaded models so that a later load brings them back.
"""

from __future__ import annotations

import asyncio

from kserve.errors import ModelNotFound
from kserve.model import BaseKServeModel
from kserve.model_repository import ModelRepository


class ReloadingRepository(ModelRepository):
    """Model repository with a working ``load(name)``."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, BaseKServeModel] = {}

    def update(self, model: BaseKServeModel, name: str | None = None) -> None:
        super().update(model, name)
        self._known[name or model.name] = model

    async def load(self, name: str) -> bool:
        model = self.models.get(name) or self._known.get(name)
        if model is None:
            raise ModelNotFound(name)
        ready = await asyncio.get_running_loop().run_in_executor(None, model.load)
        self.models[name] = model
        return bool(ready)
