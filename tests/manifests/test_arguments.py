"""Every container argument of the manifests is an option that the component's ``--help`` really lists.

The image's first argument picks the component (Dockerfile, docker/entrypoint.sh); each is asked for its
``--help`` (argparse or click), and every argument of every rendered container is checked against it: a
known option, followed by a value where it takes one, within its choices.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import BIN, REPO, by_target, render, workloads

# The image's first argument picks the component (Dockerfile, docker/entrypoint.sh); how to ask each for --help.
HELP_COMMANDS = {
    "predictor": [sys.executable, "-m", "predictor", "--help"],
    "transformer": [sys.executable, "-m", "transformer", "--help"],
    "retrain": [sys.executable, "-m", "pipelines.retrain", "--help"],
    "deadletter": [sys.executable, str(REPO / "docker" / "deadletter.py"), "--help"],
    "dashboard": [sys.executable, "-m", "dashboard", "--help"],
    "mlflow server": [str(BIN / "mlflow"), "server", "--help"],
}


# ---------------------------------------------------------------------------------------------
# Container arguments against the components' --help


def _run_help(command: list[str]) -> tuple[int, str]:
    env = {**os.environ, "COLUMNS": "200"}  # no wrapped option lines
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str]]:
    """Each component's --help, run once and concurrently (KServe's imports take a second or two)."""
    with ThreadPoolExecutor(len(HELP_COMMANDS)) as pool:
        return dict(zip(HELP_COMMANDS, pool.map(_run_help, HELP_COMMANDS.values()), strict=True))


OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)(?:[ =](\{[^}]*\}|\[[\w|-]+\]|[A-Z][A-Z0-9_]*)(?![\w-]))?")


def parse_help(text: str) -> dict[str, set[str] | bool]:
    """option -> True (takes a value), a set of choices, or False (a switch), from --help text."""
    options: dict[str, set[str] | bool] = {}
    for flag, meta in OPTION.findall(text):
        if meta.startswith(("{", "[")):
            options[flag] = set(re.split(r"[,|]", meta[1:-1]))
        elif meta:
            options[flag] = options.get(flag) or True
        else:
            options.setdefault(flag, False)
    return options


def component_of(args: list[str]) -> tuple[str, list[str]]:
    if args[0] == "mlflow":
        return f"mlflow {args[1]}", args[2:]
    return args[0], args[1:]


@by_target
def test_container_args_are_flags_the_entry_point_accepts(target, helps):
    problems = []
    for label, _, container in workloads(render(target)):
        component, args = component_of(container["args"])
        assert component in HELP_COMMANDS, f"{label}: {component!r} is no component of the images"
        code, text = helps[component]
        if code != 0:
            problems.append(f"{label}: `{' '.join(HELP_COMMANDS[component][1:])}` failed: {text.strip()[-300:]}")
            continue
        options = parse_help(text)
        i = 0
        while i < len(args):
            flag, _, inline = args[i].partition("=")
            if not flag.startswith("--") or flag not in options:
                problems.append(f"{label}: {args[i]!r} is not an option of {component} --help")
                i += 1
                continue
            kind = options[flag]
            if kind is False:
                i += 1
                continue
            value = inline or (args[i + 1] if i + 1 < len(args) else None)
            if value is None or value.startswith("--"):
                problems.append(f"{label}: {flag} needs a value")
            elif isinstance(kind, set) and value not in kind:
                problems.append(f"{label}: {flag} {value!r} not one of {sorted(kind)}")
            i += 1 if inline else 2
    assert not problems, "\n".join(problems)


def test_help_parser_reads_argparse_and_click():
    text = ("usage: x [--http_port HTTP_PORT] [--predictor_protocol {v1,v2,grpc-v2}] [--enable_check]\n"
            "  -p, --port INTEGER   the port\n  --serve-artifacts / --no-serve-artifacts\n"
            "  --app-name [basic-auth]   app\n  --dev  If enabled")
    assert parse_help(text) == {"--http_port": True, "--predictor_protocol": {"v1", "v2", "grpc-v2"},
                                "--enable_check": False, "--port": True, "--serve-artifacts": False,
                                "--no-serve-artifacts": False, "--app-name": {"basic-auth"}, "--dev": False}


@by_target
def test_every_storecast_variable_is_one_the_component_reads(target, helps):
    """A misspelt variable is silently ignored by a process: each STORECAST_* the manifests set is named in the
    component's --help (every setting says its variable there, ``(env STORECAST_...)``)."""
    problems = []
    for label, _, container in workloads(render(target)):
        component, _ = component_of(container["args"])
        named = set(re.findall(r"STORECAST_[A-Z0-9_]+", helps[component][1]))
        problems += [f"{label}: {e['name']} is not a variable of {component}" for e in container.get("env", [])
                     if e["name"].startswith("STORECAST_") and e["name"] not in named]
    assert not problems, "\n".join(problems)
