"""Which registry a ``storecast`` command uses when none is given, decided before MLflow is imported.

Order: ``--tracking-uri``, ``$MLFLOW_TRACKING_URI``, ``mlflow.db`` in the working directory, then the
project's registries in the source checkout (the one the working directory is in, else, for a command that
reads, the one this package runs from): ``mlflow.db`` at its root, ``build/demo/mlflow.db`` (``make demo``'s). A command
that only reads the registry never creates one: with none found, or a ``sqlite:///`` file that does
not exist, it stops with one line naming what it looked for (MLflow would create an empty store and
fail later, far from the cause).
"""

from __future__ import annotations

import os
from pathlib import Path

REGISTRY_FILE = "mlflow.db"
CHECKOUT_REGISTRIES = (Path(REGISTRY_FILE), Path("build") / "demo" / REGISTRY_FILE)  # under a checkout's root
# the commands that read an existing registry (train creates one; data append uses one only when given);
# with a --model-uri that is a folder rather than models:/..., they need none
READERS = frozenset({"export", "serve", "loadtest", "calendar"})


class NoRegistry(RuntimeError):
    """No registry given and none found, or a given SQLite registry that does not exist."""


def checkout_of(start: Path) -> Path | None:
    """The storecast source checkout ``start`` is in (a folder with its pyproject.toml), else None."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and (folder / "pipelines" / "cli").is_dir() and 'name = "storecast"' in \
                pyproject.read_text(errors="replace"):
            return folder
    return None


def package_checkout() -> Path | None:
    """The checkout this package runs from (a clone or an editable install), None for an installed wheel."""
    return checkout_of(Path(__file__).resolve().parent)


def find_registry(cwd: Path | None = None, checkouts: list[Path | None] | None = None) -> tuple[str, str] | None:
    """(``sqlite:///`` URI, where it was found) of the first existing registry file, else None (nothing is
    created). ``checkouts`` default: the working directory's checkout, then this package's."""
    cwd = cwd or Path.cwd()
    if (cwd / REGISTRY_FILE).is_file():
        return f"sqlite:///{REGISTRY_FILE}", "the working directory"
    roots = [checkout_of(cwd), package_checkout()] if checkouts is None else checkouts
    for root in dict.fromkeys(r.resolve() for r in roots if r is not None):
        for rel in CHECKOUT_REGISTRIES:
            if (root / rel).is_file():
                return f"sqlite:///{root / rel}", "the checkout"
    return None


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (relative to the working directory), None for other URIs."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def resolve(given: str | None, *, must_exist: bool) -> tuple[str | None, str | None]:
    """(URI, note) for a command: the given or environment URI, else a found registry (the note says which, for
    one line on stderr), else None (the command's own default, e.g. train's new ``./mlflow.db``). ``NoRegistry``
    when ``must_exist`` and there is none to read."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or None
    note = None
    if uri is None:  # a writer (train) looks in the working directory's checkout only, never in a far one
        found = find_registry(None if must_exist else Path.cwd(),
                              None if must_exist else [checkout_of(Path.cwd())])
        if found is not None:
            uri = found[0]
            note = None if found[1] == "the working directory" else \
                f"registry {uri} (found in {found[1]}; --tracking-uri or MLFLOW_TRACKING_URI choose another)"
    if must_exist:
        if uri is None:
            raise NoRegistry("no registry: no --tracking-uri, no MLFLOW_TRACKING_URI, no mlflow.db here or in the "
                             "checkout (build/demo/mlflow.db); train one first (`make demo` or `storecast train`)")
        path = sqlite_path(uri)
        if path is not None and not path.is_file():
            raise NoRegistry(f"no registry at {uri}: the file {path} does not exist (nothing was created)")
    return uri, note
