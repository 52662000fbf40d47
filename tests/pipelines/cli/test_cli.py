"""The CLI as a user meets it: help text on every flag, --version, a canary dry run with no cluster."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import yaml

from pipelines.cli.main import build_parser
from pipelines.rollout import canary
from tests.support import Recorder, run_cli

ROOT = Path(__file__).resolve().parents[3]


def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Every command and flag of the argparse tree under ``parser`` that has no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name} (the command)")
                missing += undocumented(sub, f"{path} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_flag_has_help_text() -> None:
    parser = build_parser()
    assert undocumented(parser, "storecast") == []
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"data", "train", "serve", "forecast", "canary", "loadtest"} <= set(commands)  # the walk saw them


def test_the_walk_finds_a_flag_without_help() -> None:
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers().add_parser("y", help="a command")
    sub.add_argument("--z")
    assert undocumented(p, "x") == ["x y --z"]


def test_version_is_the_installed_distributions() -> None:
    out = run_cli("--version").stdout.strip()
    assert out == f"storecast {version('storecast')}"


def test_canary_dry_run_never_reads_the_kubeconfig_or_calls_the_api(tmp_path: Path) -> None:
    api = Recorder(lambda method, path, body: (500, {"kind": "Status"}))
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({  # a cluster that answers: the dry run must not ask it
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": api.url}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}], "users": [{"name": "t", "user": {}}]}))
    try:
        out = run_cli("canary", "start", "--version", "3", "--percent", "10", "--dry-run",
                      env={"KUBECONFIG": str(config)}, cwd=tmp_path)
    finally:
        api.close()
    assert api.requests == []
    base = yaml.safe_load((ROOT / "manifests" / "base" / "inferenceservice.yaml").read_text())
    expected = canary.start_patch(base, "storecast", 3, 10)
    assert f"-p '{json.dumps(expected)}'" in out.stdout
    assert "no cluster read" in out.stderr


def test_canary_dry_run_from_a_file(tmp_path: Path) -> None:
    """``kubectl get isvc -o json`` output (a List here) with a canary running: promote's exact patch."""
    isvc = yaml.safe_load((ROOT / "manifests" / "base" / "inferenceservice.yaml").read_text())
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 25
    (tmp_path / "isvc.json").write_text(json.dumps({"kind": "List", "items": [isvc]}))
    out = run_cli("canary", "promote", "--dry-run", "--from-file", str(tmp_path / "isvc.json"), cwd=tmp_path,
                  env={"KUBECONFIG": str(tmp_path / "none")})
    assert json.dumps(canary.promote_patch(isvc)) in out.stdout


def test_the_dry_run_default_is_the_base_manifests_predictor() -> None:
    base = yaml.safe_load((ROOT / "manifests" / "base" / "inferenceservice.yaml").read_text())
    offline, _ = canary.offline("storecast", "storecast")
    assert canary.uri_arg(offline) == canary.uri_arg(base)


# ---- closed by default (issue 23): new auth files refuse anonymous callers; keys never in argv -------------------
def test_add_key_makes_a_file_that_refuses_callers_without_a_key(tmp_path: Path) -> None:
    import asyncio
    import stat

    import pytest

    from serving.access.admission import Access, Unauthenticated
    from serving.access.auth_file import load

    path = tmp_path / "auth.yaml"
    key = run_cli("auth", "add-key", "--name", "alice", "--tier", "planner", "--file", str(path)).stdout.strip()
    admin = run_cli("auth", "add-key", "--name", "root", "--tier", "admin", "--file", str(path)).stdout.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load(path)
    assert config.anonymous is None and "anonymous denied" in config.summary()
    assert "admin" in config.tiers["admin"].permissions and "admin" not in config.tiers["service"].permissions
    access = Access(config)
    with pytest.raises(Unauthenticated, match="credentials required"):
        asyncio.run(access.admit({}, ("127.0.0.1", 1), route="/v1/models/storecast:predict", protocol="rest",
                                 permission="forecast"))
    assert access.authenticate({"x-api-key": key}).name == "alice"
    assert access.authenticate({"x-api-key": admin}).tier.name == "admin"
    assert "anonymous" in run_cli("auth", "check", "--file", str(path)).stdout  # says they are denied


def test_the_key_comes_from_the_environment_or_a_file_not_the_command_line(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.support import BIN

    receiver = Recorder(lambda method, path, body: (200, {"status": "up_to_date", "job_id": "j"}))
    (tmp_path / "key").write_text("k-file\n")
    os.mkfifo(tmp_path / "fifo")

    def retrain(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "STORECAST_API_KEY"}
        return subprocess.run([str(BIN / "storecast"), "retrain", "--store", "1", "--url", receiver.url, *extra],
                              capture_output=True, text=True, timeout=60, env={**environ, **(env or {})})

    try:
        sent = []
        for extra, env in (((), {"STORECAST_API_KEY": "k-env"}),
                           (("--api-key-file", str(tmp_path / "key")), {"STORECAST_API_KEY": "k-env"}),
                           ((), None)):
            before = len(receiver.requests)
            proc = retrain(*extra, env=env)
            assert proc.returncode == 0, proc.stderr
            sent.append(receiver.requests[before]["headers"].get("authorization"))
        assert sent == ["Bearer k-env", "Bearer k-file", None]
        proc = retrain("--api-key", "k-argv")  # a key is never taken from the command line, where ps shows it
        assert proc.returncode == 2 and "never taken from the command line" in proc.stderr, proc.stderr
        assert "k-argv" not in proc.stderr
        before = len(receiver.requests)
        for path, says in ((tmp_path / "fifo", "not a regular file"), (tmp_path / "nope", "cannot read the key file")):
            proc = retrain("--api-key-file", str(path))  # a FIFO is refused, never waited on
            assert proc.returncode != 0 and says in proc.stderr and str(path) in proc.stderr, proc.stderr
        assert len(receiver.requests) == before  # nothing sent without the key asked for
    finally:
        receiver.close()
