"""Stub of ``kubernetes.client`` in storecast's serving image: see the package docstring."""

from kubernetes import missing


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise missing("client", name)
