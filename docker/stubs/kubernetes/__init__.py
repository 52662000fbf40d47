"""Stand-in for the Kubernetes client in storecast's serving image (not the ``kubernetes`` package).

``import kserve`` imports ``kubernetes.client``, ``kubernetes.config`` and ``kubernetes.watch`` at
import time, for its ``KServeClient`` (a cluster API client); the predictor and the transformer never
use it. The serving image leaves the real client (about 130 MB with its dependencies) out and ships
this package instead: importing works, using anything in it raises ImportError naming the full image.
"""

from __future__ import annotations

MESSAGE = ("the Kubernetes client is not in storecast's serving image (kubernetes.{name}); "
           "use the full image (storecast), which has it")


def missing(module: str, name: str) -> ImportError:
    return ImportError(MESSAGE.format(name=f"{module}.{name}" if module else name))


from kubernetes import client, config, watch  # noqa: E402 - the submodules kserve imports

__all__ = ["client", "config", "watch"]


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise missing("", name)
