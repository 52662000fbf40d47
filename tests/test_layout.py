"""The layout rules, checked on the source (docs/architecture.md, "Layout"): no import cycle anywhere, each
package imports only what the layout allows, the wings of ``pipelines`` stand in layers, ``loadtest`` drives the
system from outside, no module grows past 400 lines without saying why, and no production module is there only
for the tests."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("serving", "predictor", "transformer", "pipelines", "dashboard", "loadtest", "mlserver_runtime")
WINGS = ("data", "training", "versions", "rollout", "retrain", "clients", "backtest", "cli")
# A wing may import the wings before it in this order (and the flat modules ``events`` and ``stack``);
# ``clients`` stands apart: it speaks to the business API as any client does; ``backtest`` trains, serves
# and asks the business API as a client.
LAYERS = {"data": (), "training": ("data",), "versions": ("data", "training"),
          "rollout": ("data", "training", "versions"),
          "retrain": ("data", "training", "versions", "rollout"), "clients": (),
          "backtest": ("data", "training", "versions", "clients"),
          "cli": ("data", "training", "versions", "rollout", "retrain", "clients", "backtest")}


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` (its sub-packages included) -> the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        if name != package and not name.startswith(package + "."):
            continue
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    return graph


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        graph.update(imports(package))
    known = set(graph)
    edges = {m: {d for d in deps if d in known and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    assert len(known) > 100, "the layout test no longer sees the packages"
    for m in sorted(known):
        if m not in state:
            visit(m)


def top(module: str) -> str:
    return module.split(".")[0]


def test_who_imports_whom() -> None:
    for module, deps in imports("predictor").items():
        assert not any(top(d) in ("pipelines", "transformer", "dashboard", "loadtest") for d in deps), (module, deps)
    for module, deps in imports("transformer").items():
        assert not any(top(d) in ("predictor", "pipelines", "dashboard", "loadtest") for d in deps), (module, deps)
    for module, deps in imports("serving").items():
        assert not any(top(d) in ("predictor", "transformer", "pipelines", "dashboard", "loadtest")
                       for d in deps), (module, deps)
    for module, deps in imports("serving.access").items():
        assert all(d.startswith(("serving.access", "serving.errors", "serving.contract")) for d in deps), \
            (module, deps)
    for module, deps in imports("dashboard").items():
        assert not any(top(d) in ("transformer", "loadtest") for d in deps), (module, deps)


def test_the_mlserver_runtime_is_the_predictors_core_under_another_server() -> None:
    """``mlserver_runtime`` imports only the predictor's core and version loader and ``serving``'s framework-free
    modules (never KServe, MLflow's client or pandas: its own environment has none); only its ``runtime`` and
    ``tensors`` import MLServer; only the CLI imports the runtime's package, and only its launcher."""
    core = ("predictor.codec", "predictor.inference", "predictor.loader", "predictor.request_values",
            "predictor.snapshot", "predictor.settings", "predictor.source", "serving.budget", "serving.contract",
            "serving.errors", "serving.logs", "serving.settings", "serving.tensors", "serving.access.settings")
    for module, deps in imports("mlserver_runtime").items():
        for d in deps:
            assert top(d) in ("mlserver_runtime", "predictor", "serving"), (module, d)
            assert top(d) == "mlserver_runtime" or d.startswith(core) or d in ("predictor", "serving"), (module, d)
        if module == "mlserver_runtime.launch":
            continue
        assert "serving.access.settings" not in deps, module  # the launcher runs in the KServe environment
    for path in sorted((REPO / "mlserver_runtime").glob("*.py")):
        names = {n.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 for n in ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}
        assert not names & {"kserve", "mlflow", "pandas", "fastapi"}, path
        assert ("mlserver" in names) == (path.stem in ("runtime", "tensors")), path
    for package in PACKAGES:
        for module, deps in imports(package).items():
            if top(module) != "mlserver_runtime" and any(top(d) == "mlserver_runtime" for d in deps):
                assert module == "pipelines.cli.mlserver", module


def test_the_wings_of_pipelines_stand_in_layers() -> None:
    for wing in WINGS:
        allowed = {f"pipelines.{w}" for w in (wing, *LAYERS[wing])} | {"pipelines.events", "pipelines.stack"}
        for module, deps in imports(f"pipelines.{wing}").items():
            for d in deps:
                if top(d) != "pipelines" or d in ("pipelines", "pipelines.events", "pipelines.stack"):
                    continue
                assert ".".join(d.split(".")[:2]) in allowed, f"{module} imports {d}: not allowed for {wing}"
            assert not any(top(d) in ("transformer", "dashboard") for d in deps), (module, deps)
            if wing != "cli":
                assert not any(top(d) == "loadtest" for d in deps), (module, deps)
    flat = [p.stem for p in (REPO / "pipelines").glob("*.py") if p.stem != "__init__"]
    assert len(flat) <= 12, f"pipelines/ keeps {len(flat)} flat modules: {flat}"


def test_loadtest_drives_the_system_from_outside() -> None:
    """``loadtest`` may import ``pipelines`` (the local stack) and ``serving.contract``; no package but the CLI
    imports ``loadtest``; and no ``loadtest`` module imports KServe (pytest and Locust import them)."""
    for module, deps in imports("loadtest").items():
        assert all(top(d) in ("loadtest", "pipelines") or d.startswith("serving.contract") for d in deps), \
            (module, deps)
    for package in ("serving", "predictor", "transformer", "dashboard"):
        for module, deps in imports(package).items():
            assert not any(top(d) == "loadtest" for d in deps), (module, deps)
    for path in sorted((REPO / "loadtest").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "kserve" for n in names), path


def test_no_module_over_400_lines_without_a_reason() -> None:
    """A module past 400 lines says why in its docstring (a sentence naming its length, "lines")."""
    long = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "lines" not in doc:
                long.append(f"{name} ({len(text.splitlines())} lines)")
    assert not long, f"modules over 400 lines without a reason in their docstring: {long}"


def test_no_production_module_is_there_only_for_the_tests() -> None:
    """Every production module is imported by another production module, named by a manifest, the
    Dockerfile, the Makefile, pyproject's scripts, a script or a benchmark, run by file name (Locust's
    ``locustfile.py``), named as a ``module:factory`` setting (``--doors``), or is a package's entry point."""
    names = modules()
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        graph.update(imports(package))
    used = {d for deps in graph.values() for d in deps}
    used |= {".".join(d.split(".")[:-1]) for d in used}
    elsewhere = "".join(p.read_text() for pattern in ("manifests/**/*.yaml", "scripts/*.sh", "docker/*", "mk/*.mk",
                                                       "Dockerfile", "Makefile", "pyproject.toml", "bench/*.py")
                        for p in REPO.glob(pattern) if p.is_file())
    sources = {name: path.read_text() for name, path in names.items()}
    orphans = [name for name, path in names.items()
               if path.stem not in ("__init__", "__main__") and name not in used
               and name not in elsewhere and name.replace(".", "/") not in elsewhere
               and not any(f'"{path.name}"' in text or f'"{name}:' in text  # run by file, or a --doors factory
                           for other, text in sources.items() if other != name)]
    assert not orphans, f"production modules only the tests use: {orphans}"


def test_settings_come_from_the_environment(monkeypatch) -> None:
    from serving.settings import early_parser
    from transformer.settings import TransformerSettings

    monkeypatch.setenv("STORECAST_MAX_INFLIGHT", "7")
    monkeypatch.setenv("STORECAST_HOST", "127.0.0.1")
    args, _ = early_parser(TransformerSettings, "t").parse_known_args([])
    assert (args.max_inflight, args.host) == (7, "127.0.0.1")
    args, _ = early_parser(TransformerSettings, "t").parse_known_args(["--max-inflight", "9"])
    assert args.max_inflight == 9  # the command line wins


def test_tests_share_helpers_only_through_support() -> None:
    """A test module imports helpers from ``tests.support`` (or its folder's own non-test modules), never from
    another test module."""
    crossing = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("tests.") and n.split(".")[-1].startswith("test_") for n in names):
                crossing.append(str(path.relative_to(REPO)))
    assert not crossing, f"test modules importing another test module: {sorted(set(crossing))}"
