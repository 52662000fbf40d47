"""The package as a user installs it: a wheel built from the sources, installed into a fresh venv.

Once per session (about a minute and a half here: pip resolves every dependency from its cache or
the registry, pinned by docker/constraints.txt so it resolves what the images get): ``pip wheel
--no-deps`` of a copy of the packaged sources, ``python -m venv``, ``pip install --no-compile
WHEEL``. Then every command runs from that venv, in a folder with no sources in it: every
``storecast`` command's ``--help``, the servers' ``--help``, ``storecast --version``, ``data synth``,
a tiny ``train`` of 3 synthetic stores, a canary dry run with no cluster, and Locust reading the
locustfile shipped in the package. Deselect with ``-m "not wheel"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.wheel


@dataclass
class Installed:
    venv: Path
    wheel: Path
    work: Path
    seconds: float

    def run(self, *argv: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a program of the venv in a folder without sources; fail with its stderr if it fails."""
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.work, env={**clean, **(env or {})})
        assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc


def packaged_sources(dst: Path) -> Path:
    """What the wheel is built from: pyproject.toml, README.md and the packages it lists (a clean copy, so
    nothing is written into the working tree)."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        include = tomllib.load(fh)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*").rstrip(".") for pattern in include})
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    for pkg in packages:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    t0 = time.perf_counter()
    src = packaged_sources(root / "storecast")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(root / "dist"), str(src)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("storecast-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--no-compile", "-c", str(ROOT / "docker" / "constraints.txt"), f"{wheel}[loadtest]"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    return Installed(venv, wheel, work, time.perf_counter() - t0)


def test_installed_from_the_wheel_not_the_sources(installed: Installed) -> None:
    where = installed.run("python", "-c", "import loadtest, pipelines, predictor; "
                          "print(loadtest.__file__, pipelines.__file__, predictor.__file__)")
    assert all("site-packages" in p for p in where.stdout.split()), where.stdout
    print(f"wheel built and installed into a fresh venv in {installed.seconds:.0f} s")


def test_version(installed: Installed) -> None:
    out = installed.run("storecast", "--version").stdout.strip()
    assert out == "storecast " + installed.wheel.name.split("-")[1]


# In the installed venv: `storecast <command...> --help` for every command and subcommand, in one process
# (each through main(), as the console script calls it; one process because each start imports a lot).
HELP_WALK = """
import argparse, contextlib, io, json
from pipelines.cli.main import build_parser, main

def walk(p, path):
    yield path
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from walk(sub, [*path, name])

answers = {}
for path in walk(build_parser(), []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"])
        except SystemExit as exc:
            code = exc.code
    answers[" ".join(path)] = [code, out.getvalue()]
print(json.dumps(answers))
"""


def test_every_command_answers_help(installed: Installed) -> None:
    """Every command and subcommand of ``storecast``, from the installed parser, and the servers."""
    servers = {m: subprocess.Popen([str(installed.venv / "bin" / "python"), "-m", m, "--help"], cwd=installed.work,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for m in ("predictor", "transformer", "pipelines.retrain", "dashboard")}
    assert installed.run("storecast", "--help").stdout.startswith("usage: storecast")
    answers = json.loads(installed.run("python", "-c", HELP_WALK).stdout)
    assert {"forecast", "canary start", "loadtest", "data synth"} <= set(answers), sorted(answers)
    for path, (code, text) in answers.items():
        assert code in (0, None) and text.startswith(f"usage: storecast {path}".rstrip()), (path, code, text[:200])
    for module, proc in servers.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in out, (module, err[-2000:])


def test_synth_train_and_canary_dry_run(installed: Installed) -> None:
    installed.run("storecast", "data", "synth", "--stores", "3", "--seed", "5", "--out", "sales.csv.gz")
    out = installed.run("storecast", "train", "--data", "sales.csv.gz", "--tracking-uri", "sqlite:///mlflow.db",
                        "--alias", "champion", "--workers", "1", "--no-progress", "--json").stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["version"] in ("1", 1) and result["stores"] == 3, result
    dry = installed.run("storecast", "canary", "start", "--version", "1", "--percent", "10", "--dry-run",
                        env={"KUBECONFIG": str(installed.work / "no-such-kubeconfig")})
    assert "patch inferenceservice storecast --type=json" in dry.stdout
    assert '"path": "/spec/predictor/canaryTrafficPercent", "value": 10' in dry.stdout


def test_locust_reads_the_shipped_locustfile(installed: Installed) -> None:
    found = installed.run("python", "-c", "from loadtest.runner import LOCUSTFILE; print(LOCUSTFILE)").stdout.strip()
    assert "site-packages" in found and Path(found).is_file()
    users = installed.run("locust", "-f", found, "--list").stdout
    assert {"Planner", "Service", "Event", "Refresher"} <= set(users.split()), users
