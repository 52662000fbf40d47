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
