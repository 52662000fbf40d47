"""The layout rules, checked on the source: no import cycles in the serving code, ``predictor`` never imports
``pipelines``, ``transformer`` imports nothing of ``predictor``, ``serving`` neither, ``loadtest`` imports only
``pipelines`` and ``serving.contract`` and no server imports it, every settings field is in the README with its
variable, and so is every variable Locust reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("serving", "predictor", "transformer")


def imports(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` -> the project modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / package).glob("*.py")):
        name = f"{package}.{path.stem}" if path.stem != "__init__" else package
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m.split(".")[0] in (*PACKAGES, "pipelines", "dashboard", "loadtest")}
    return graph


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        graph.update(imports(package))
    modules = set(graph)
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
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

    for m in sorted(modules):
        if m not in state:
            visit(m)


def test_who_imports_whom() -> None:
    for module, deps in imports("predictor").items():
        assert not any(d.startswith("pipelines") for d in deps), (module, deps)
    for module, deps in imports("transformer").items():
        assert not any(d.startswith("predictor") or d.startswith("pipelines") for d in deps), (module, deps)
    for module, deps in imports("serving").items():
        assert not any(d.split(".")[0] in ("predictor", "transformer", "pipelines") for d in deps), (module, deps)


def test_loadtest_drives_the_system_from_outside() -> None:
    """``loadtest`` may import ``pipelines`` (the local stack) and ``serving.contract``; ``predictor``,
    ``transformer``, ``serving`` and ``dashboard`` never import ``loadtest``; and no ``loadtest`` module imports
    KServe (pytest and Locust import them)."""
    for module, deps in imports("loadtest").items():
        assert all(d.split(".")[0] in ("loadtest", "pipelines") or d == "serving.contract"
                   or d.startswith("serving.contract.") for d in deps), (module, deps)
    for package in (*PACKAGES, "dashboard"):
        for module, deps in imports(package).items():
            assert not any(d.split(".")[0] == "loadtest" for d in deps), (module, deps)
    for path in sorted((REPO / "loadtest").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "kserve" for n in names), path


def test_every_variable_locust_reads_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Environment variables"):]
    table = table[:table.index("\n## ")]
    names = {n for f in ("locustfile.py", "guard.py")
             for n in re.findall(r"[\"'](STORECAST_[A-Z_]+)[\"']", (REPO / "loadtest" / f).read_text())}
    assert len(names) >= 13, names
    assert not [n for n in sorted(names) if f"`{n}`" not in table]


def test_every_setting_is_in_the_readme() -> None:
    from predictor.settings import PredictorSettings
    from transformer.settings import TransformerSettings

    readme = (REPO / "README.md").read_text()
    for settings in (PredictorSettings, TransformerSettings):
        for flag, env, _default, _help in settings.table():
            assert f"`{flag}`" in readme and f"`{env}`" in readme, (flag, env)


def test_settings_come_from_the_environment(monkeypatch) -> None:
    from serving.settings import early_parser
    from transformer.settings import TransformerSettings

    monkeypatch.setenv("STORECAST_MAX_INFLIGHT", "7")
    monkeypatch.setenv("STORECAST_HOST", "127.0.0.1")
    args, _ = early_parser(TransformerSettings, "t").parse_known_args([])
    assert (args.max_inflight, args.host) == (7, "127.0.0.1")
    args, _ = early_parser(TransformerSettings, "t").parse_known_args(["--max-inflight", "9"])
    assert args.max_inflight == 9  # the command line wins
