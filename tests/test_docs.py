"""The docs cite only what the repository holds: every file or folder named in backticks exists, and the
architecture's walks name existing modules and functions."""

from __future__ import annotations

import re

import pytest

from tests.support import REPO

DOCS = ["README.md", "docs/architecture.md", "predictor/README.md", "dashboard/README.md", "manifests/README.md"]
CITED = re.compile(r"`([A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*/?)(?:`|[ :(])")
OUTPUTS = ("build", "dist", "results", "artifacts", "mlruns")  # written by commands, never in git
SUFFIXES = (".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".json", ".txt", ".mk", ".png", ".html", ".js", ".css")


def cited_paths(text: str) -> set[str]:
    """Paths cited in backticks: names with a slash or a known file suffix (no placeholders, no URLs)."""
    found = set()
    for name in CITED.findall(text):
        if name.startswith(("http", "../", "/", "~")) or "://" in name:
            continue
        top = name.split("/")[0]
        if "/" in name and top not in OUTPUTS and (name.endswith(SUFFIXES) or name.endswith("/")):
            found.add(name)
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_file_exists(doc: str) -> None:
    base = REPO / doc
    missing = []
    for name in sorted(cited_paths(base.read_text())):
        top = name.split("/")[0]
        if not ((REPO / top).is_dir() or (base.parent / top).is_dir()):
            continue  # not a folder of the repository: a path the docs' commands write (results/, sales/, ...)
        if not ((REPO / name).exists() or (base.parent / name).exists()):
            missing.append(name)
    assert not missing, f"{doc} cites files the repository does not hold: {missing}"


def test_the_walks_name_what_is_there() -> None:
    """Every ``module.py`` ``name`` pair of a station in the two walks names a function or class in it."""
    text = (REPO / "docs/architecture.md").read_text()
    walks = text[text.index("## Two walks"):text.index("## The contract")]
    stations = re.findall(r"^\s*\d+\. ", walks, flags=re.M)
    assert len(stations) >= 10, "the walks lost their numbered stations"
    checked = 0
    for path, name in re.findall(r"`([a-z_/]+\.py)` `([A-Za-z_][A-Za-z_0-9.]*)`", walks):
        source = (REPO / path).read_text()
        last = name.split(".")[-1]
        assert re.search(rf"(def|class) {last}\b", source), f"{path} has no {name}"
        checked += 1
    assert checked >= 8
