"""The README's configuration tables against what the code reads, both ways.

A configuration table is a table of README.md with an ``env`` or ``variable`` column. Every ``STORECAST_*``
variable the code reads is listed in one, and every variable they list is read by the code. What the code
reads: the fields of every settings class (``serving.settings.Settings``: the predictor's, the transformer's,
the retrain service's, the dashboard's), the access flags (``serving.access.settings``), and every other
variable named in the source of the production packages (``os.environ`` reads, constants naming a variable;
Locust's included); a variable the README lists may also be read by the benchmarks or the test helpers
(``STORECAST_ROSSMANN``). A setting's flag is in the same row as its variable.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = ("serving", "predictor", "transformer", "pipelines", "dashboard", "loadtest", "mlserver_runtime")
NAME = re.compile(r"STORECAST_[A-Z0-9_]*[A-Z0-9]")
PROCESSES = {"PredictorSettings", "TransformerSettings", "RetrainSettings", "dashboard.config.Settings"}


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (a ``|`` inside backticks is text)."""
    out, cell, code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            out.append(cell.strip())
            cell = ""
        else:
            cell += ch
    return [*out, cell.strip()]


@cache
def config_rows() -> tuple[tuple[str, str], ...]:
    """(first cell, variable cell) of every row of the README's configuration tables."""
    rows: list[tuple[str, str]] = []
    lines = (REPO / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        starts = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
        header = [c.lower() for c in cells(line)] if starts else []
        column = next((k for k, c in enumerate(header) if c in ("env", "variable")), None)
        if column is None:
            continue
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            values = cells(row)
            rows.append((values[0], values[column] if column < len(values) else ""))
    return tuple(rows)


def readme_names() -> set[str]:
    """The variables the configuration tables list (patterns such as ``STORECAST_<FLAG>`` are not names)."""
    return {n for _, env in config_rows() for n in re.findall(rf"`({NAME.pattern})`", env)}


def production_files() -> list[Path]:
    return [p for package in PRODUCTION for p in sorted((REPO / package).rglob("*.py"))]


def helper_files() -> list[Path]:
    """The benchmarks and the test helpers (not the tests, which set variables rather than read them)."""
    return [*sorted((REPO / "bench").glob("*.py")), REPO / "tests" / "support.py", REPO / "tests" / "conftest.py"]


def settings_classes() -> list[type]:
    """Every settings class of the production packages (the modules that declare settings fields)."""
    from serving.settings import Settings

    for path in production_files():
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.ImportFrom) and n.module == "serving.settings" and
               any(a.name == "setting" for a in n.names) for n in ast.walk(tree)):
            importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    found, todo = [], [Settings]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    named = {c.__name__ for c in found} | {f"{c.__module__}.{c.__name__}" for c in found}
    assert not PROCESSES - named, PROCESSES - named
    return found


def settings_pairs() -> set[tuple[str, str]]:
    """(flag, variable) of every settings field and every access flag."""
    from serving.access.settings import add_access_arguments

    pairs = {(flag, env) for cls in settings_classes() for flag, env, _default, _help in cls.table()}
    parser = argparse.ArgumentParser(add_help=False)
    add_access_arguments(parser)
    access = {(a.option_strings[0], env) for a in parser._actions for env in NAME.findall(a.help or "")}
    assert len(access) >= 8, access
    return pairs | access


def source_names(files: list[Path]) -> set[str]:
    """Every ``STORECAST_*`` variable named as a string of its own in the source of ``files``."""
    return {node.value for path in files for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value)}


def code_names() -> set[str]:
    """What the production code reads."""
    return {env for _, env in settings_pairs()} | source_names(production_files())


def test_every_variable_the_code_reads_is_in_the_readme() -> None:
    listed = readme_names()
    assert len(config_rows()) > 50, "the README's configuration tables were not found"
    assert sorted(code_names() - listed) == []


def test_every_variable_the_readme_lists_is_read_by_the_code() -> None:
    assert sorted(readme_names() - code_names() - source_names(helper_files())) == []


def test_every_setting_is_in_the_readme_with_its_flag() -> None:
    rows = [(set(re.findall(r"`(--[a-z0-9_-]+)", first)), env) for first, env in config_rows()]
    missing = [(flag, env) for flag, env in sorted(settings_pairs())
               if not any(flag in flags and f"`{env}`" in cell for flags, cell in rows)]
    assert missing == []


def test_every_variable_locust_reads_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Environment variables"):]
    table = table[:table.index("\n## ")]
    names = {n for f in ("locustfile.py", "guard.py")
             for n in re.findall(r"[\"'](STORECAST_[A-Z_]+)[\"']", (REPO / "loadtest" / f).read_text())}
    assert len(names) >= 13, names
    assert not [n for n in sorted(names) if f"`{n}`" not in table]
