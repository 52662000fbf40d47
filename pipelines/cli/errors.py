"""Every ``storecast`` failure as one line: usage errors, missing extras, and exceptions by kind.

``pipelines.cli.main`` prints ``storecast <command>: <one_line(exc)>`` for any exception a command raises
(``--debug`` shows the traceback), so a module never needs its own handler to be readable: a Kubernetes
client without a cluster, an HTTP client that cannot connect, MLflow's exceptions, a module of an extra
that is not installed each get a sentence of their own here.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any, NoReturn

# the top-level module an optional command imports -> the extra of pyproject.toml that installs it
EXTRA_OF = {"locust": "loadtest", "ray": "ray", "pyarrow": "parquet", "flask": "server", "playwright": "test",
            "lightgbm": "backtest", "mlforecast": "backtest"}
MAX_CHARS = 400


class CliParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def installed(module: str) -> bool:
    """Is ``module`` importable (without importing it)?"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str:
    """How to get ``module``: the extra that has it."""
    extra = EXTRA_OF.get(module.partition(".")[0])
    return f"pip install 'storecast[{extra}]'" if extra else f"pip install {module.partition('.')[0]}"


def missing_extra(args: argparse.Namespace) -> str | None:
    """One line naming the extra a command needs when it is not installed, before the command starts."""
    if args.command == "loadtest" and not installed("locust"):
        return f"needs Locust, an optional part of storecast: {install_hint('locust')} (make loadtest installs it)"
    if args.command == "serve" and getattr(args, "mlflow_server", False) and not installed("flask"):
        return f"--mlflow-server needs the MLflow server, an optional part of storecast: {install_hint('flask')}"
    return None


def one_line(exc: BaseException) -> str:
    """What went wrong, in one line (at most ``MAX_CHARS`` characters)."""
    text = _first_line(exc)
    name, module = type(exc).__name__, type(exc).__module__
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        text = f"needs {exc.name.partition('.')[0]}, not installed: {install_hint(exc.name)}"
    elif name == "ConfigException" and module.startswith("kubernetes"):
        text = ("no Kubernetes cluster to talk to: no kubeconfig ($KUBECONFIG or ~/.kube/config) and not running in "
                f"a pod ({text or name})")
    elif module.startswith(("httpx", "httpcore")):
        text = _http(exc, text)
    elif module.startswith("mlflow"):
        text = f"registry: {getattr(exc, 'message', None) or text}".splitlines()[0]
    elif not (text.startswith(name) or isinstance(exc, RuntimeError | ValueError | LookupError)):
        text = f"{name}: {text}"
    text = text or name
    return (text[:MAX_CHARS] + " ...") if len(text) > MAX_CHARS else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("; log tail:")[0].strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) quotes its message
    return text.splitlines()[0].strip() if text else ""


def _http(exc: BaseException, text: str) -> str:
    """An HTTP client failure, naming the URL it could not reach."""
    request: Any = None
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx raises when an error carries no request
        request = None
    url = f"{request.url}" if request is not None else ""
    kind = type(exc).__name__
    if kind in ("ConnectError", "ConnectTimeout"):
        return f"cannot connect to {url or 'the server'}: {text or kind} (is it running? --url says where)"
    return f"{url + ': ' if url else ''}{kind}: {text}" if text else f"{url} {kind}".strip()

