"""The MLServer image (Dockerfile target ``mlserver``), checked on the sources with no container engine.

- its venv is the runtime's own lock (``mlserver_runtime/requirements.txt``, every line pinned) installed
  with ``--no-deps`` and nothing else, ``pip check`` unexcused, pip and setuptools removed;
- it copies exactly the project packages the runtime imports: the import closure of ``mlserver_runtime``,
  walked over the repository's sources (module- and function-level imports, not ``TYPE_CHECKING`` ones),
  and the build context (``.dockerignore`` allowlist) lets each of them in; the closure's module-level
  third-party imports are all in the lock;
- it runs as a numeric non-root user, copies only the venv and its models folder onto the slim base, and its
  defaults serve ``models:/storecast@champion`` as the model ``storecast`` on all interfaces, in-process;
- the entrypoint runs ``mlserver`` there and only there, and the other images' answers are unchanged;
- ``make image`` builds the third image too.

``make image-smoke`` builds and runs the real images (podman, root).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from predictor.source import DEFAULT_URI
from serving.contract import MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "mlserver_runtime" / "requirements.txt"
RUNTIME = ROOT / "mlserver_runtime" / "runtime.py"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
NOT_PACKAGES = {"tests", "build", "bench", "docs", "scripts", "docker", "manifests", "mlruns"}


# ---------------------------------------------------------------------------------------------
# The Dockerfile, parsed: stages, their bases and instructions


@dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def stages() -> dict[str, Stage]:
    """Every stage by name (in order), its continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            base, _, name = rest.partition(" AS ")
            current = found.setdefault(name.strip(), Stage(name.strip(), base.strip()))
        elif current is not None:
            current.steps.append((word.upper(), " ".join(rest.split())))
    return found


def chain(target: str) -> list[Stage]:
    """The stage and the stages it is built FROM, the target first."""
    all_stages, out = stages(), []
    while target in all_stages:
        out.append(all_stages[target])
        target = all_stages[target].base
    return out


def steps(target: str, instruction: str) -> list[str]:
    return [args for stage in reversed(chain(target)) for word, args in stage.steps if word == instruction]


def env(target: str) -> dict[str, str]:
    """ENV along the chain (later stages win), as ``ENV KEY=VALUE ...`` writes it."""
    out: dict[str, str] = {}
    for args in steps(target, "ENV"):
        out.update(token.split("=", 1) for token in shlex.split(args))  # type: ignore[arg-type]
    return out


def venv_stage(target: str) -> str:
    """The stage the target's /opt/venv is copied from."""
    pattern = r"--from=(\S+) /opt/venv /opt/venv"
    [source] = [m[1] for args in steps(target, "COPY") if (m := re.fullmatch(pattern, args))]
    return source


# ---------------------------------------------------------------------------------------------
# The import closure of mlserver_runtime, from the repository's sources


def repo_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in NOT_PACKAGES
            and not p.name.startswith(".") and any(p.glob("*.py"))}


def source_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether at module level) for every import that can run: the ``TYPE_CHECKING``
    blocks never do; ``from X import a`` imports ``X.a`` when that is a module of the repository."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                visit(child, top)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((base, top))
            found.extend((f"{base}.{a.name}", top) for a in node.names if source_of(f"{base}.{a.name}"))
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return found


def with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def walk(starts: list[str], eager: bool) -> tuple[set[str], dict[str, set[str]]]:
    """The repository modules that ``starts`` run (parents included; with ``eager``, only through imports at
    module level: what importing them executes), and the top-level names of the third-party modules those
    import at module level, with the modules that do."""
    own = repo_packages()
    todo = [m for start in starts for m in with_parents(start)]
    seen: set[str] = set()
    third_party: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = source_of(module)
        if path is None:  # a namespace package folder, or a name that is not a module
            continue
        for name, top in imports_of(module, path):
            head = name.partition(".")[0]
            if head in own and (top or not eager):
                todo.extend(with_parents(name))
            elif top and head and head != "__future__" and head not in sys.stdlib_module_names:
                third_party.setdefault(head, set()).add(module)
    return {m for m in seen if source_of(m) or ROOT.joinpath(*m.split(".")).is_dir()}, third_party


def runtime_modules() -> list[str]:
    """Every module of mlserver_runtime: where the closure walk starts."""
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted((ROOT / "mlserver_runtime").rglob("*.py"))]


def copied_packages() -> dict[str, str]:
    """Repository package -> where the mlserver venv's stages COPY it from the build context."""
    out = {}
    for args in steps(venv_stage("mlserver"), "COPY"):
        if not args.startswith("--"):
            *sources, dest = args.split()
            out.update({src.strip("/"): dest for src in sources if src.strip("/") in repo_packages()})
    return out


def needs_runtime() -> None:
    if not RUNTIME.is_file():
        pytest.skip("mlserver_runtime/runtime.py does not exist yet: no import closure to compare with")


# ---------------------------------------------------------------------------------------------
# The venv


def test_the_venv_is_the_runtime_lock_alone_installed_without_dependencies() -> None:
    pinned = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    loose = [line for line in pinned if len(Requirement(line).specifier) != 1 or "==" not in line]
    assert not loose, f"mlserver_runtime/requirements.txt must pin every distribution (--no-deps): {loose}"
    assert {canonicalize_name(Requirement(line).name) for line in pinned} >= {"mlserver", "numpy"}
    source = venv_stage("mlserver")
    runs = steps(source, "RUN")
    installs = [cmd for run in runs for cmd in run.split("&&") if re.search(r"\bpip install\b", cmd)]
    assert [" ".join(c.split()) for c in installs] == [
        "/opt/venv/bin/pip install --no-deps -r mlserver_runtime/requirements.txt"], installs
    assert any(re.fullmatch(r"mlserver_runtime/requirements.txt \S+", a) for a in steps(source, "COPY"))
    checks = [run for run in runs if "pip check" in run]
    assert checks and not any(re.search(r"pip check[^&]*\|\|", run) for run in checks), "pip check must pass"
    assert any("pip uninstall -y -q setuptools pip" in run for run in runs), "pip and setuptools stay in the venv"
    assert env(source).get("PIP_NO_CACHE_DIR") == "1"
    assert not any(re.search(r"apt-get|apk add|\b(gcc|g\+\+|build-essential)\b", run) for run in runs)


def test_the_final_stage_copies_only_the_venv_and_the_models_folder() -> None:
    copies = [args for args in steps("mlserver", "COPY") if args.startswith("--from=")]
    assert {args.split()[1] for args in copies} <= {"/opt/venv", "/opt/models"}, copies
    assert chain("mlserver")[-1].base == "${PYTHON_IMAGE}", "the mlserver image is not on the slim base"
    assert not steps("mlserver", "RUN")[len(steps("runtime", "RUN")):], "RUN steps on top of the runtime stage"


# ---------------------------------------------------------------------------------------------
# The code: exactly the runtime's import closure


def test_the_image_holds_exactly_the_packages_the_runtime_imports() -> None:
    needs_runtime()
    modules, _ = walk(runtime_modules(), eager=False)
    wanted = {m.partition(".")[0] for m in modules}
    assert {"mlserver_runtime", "predictor", "serving"} <= wanted, wanted  # the lead's fixed facts
    copied = copied_packages()
    assert set(copied) == wanted, f"copied {sorted(copied)}, the runtime imports {sorted(wanted)}"
    runs = " ".join(steps(venv_stage("mlserver"), "RUN"))
    for package, dest in copied.items():
        assert re.search(rf"cp -r [^&]*{re.escape(dest.rstrip('/'))}[ /][^&]*site-packages/", runs), \
            f"{package} is copied to {dest} but never into the venv's site-packages"


def test_the_build_context_lets_in_what_the_mlserver_stages_copy() -> None:
    allow = [line[1:].strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.startswith("!")]
    needed = ["mlserver_runtime/requirements.txt", *copied_packages()]
    shut = [p for p in needed if not any(p == a or p.startswith(a + "/") for a in allow)]
    assert not shut, f".dockerignore (an allowlist) keeps these out of the build context: {shut}"


def test_what_importing_the_runtime_imports_is_in_its_lock() -> None:
    """The image imports the implementation class's module: every third-party module that import executes is
    pinned in the lock (imports inside functions are not: they run only on the paths that call them)."""
    needs_runtime()
    implementation = env("mlserver")["MLSERVER_MODEL_IMPLEMENTATION"].rpartition(".")[0]
    _, third_party = walk([implementation], eager=True)
    lock = {canonicalize_name(Requirement(line).name) for line in LOCK.read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    dists = importlib.metadata.packages_distributions()
    missing = {name: sorted(users) for name, users in third_party.items()
               if not {canonicalize_name(d) for d in dists.get(name, [name])} & lock}
    assert not missing, f"imported at module level but not in mlserver_runtime/requirements.txt: {missing}"


def test_the_closure_walk_follows_lazy_and_relative_imports_and_skips_type_checking(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nfrom . import b\nimport numpy\n"
                              "if TYPE_CHECKING:\n    from pkg import c\n"
                              "def f():\n    from .sub import d\n    import mlflow\n")
    for name in ("b", "c"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = imports_of("pkg.a", pkg / "a.py")
    assert ("pkg.b", True) in found and ("numpy", True) in found and ("mlflow", False) in found
    assert ("pkg.sub.d", False) in found and not any(name == "pkg.c" for name, _ in found)


# ---------------------------------------------------------------------------------------------
# User, defaults, entrypoint


def test_it_runs_as_a_numeric_non_root_user_and_the_other_targets_are_untouched() -> None:
    args = {k: v for a in steps("mlserver", "ARG") for k, _, v in [a.partition("=")]}
    [*_, user] = steps("mlserver", "USER")
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], user).partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    assert list(stages())[-1] == "full", "a plain `podman build .` must still build the full image"
    for target in ("serve", "full"):
        built_from = {s.name for s in chain(target) + chain(venv_stage(target))}
        assert not {name for name in built_from if "mlserver" in name}, (target, built_from)


def test_the_defaults_serve_the_champion_on_all_interfaces_in_process() -> None:
    settings = env("mlserver")
    assert settings["STORECAST_IMAGE"] == "mlserver"
    assert settings["MLSERVER_HOST"] == "0.0.0.0"  # reachable in the pod; NetworkPolicies decide who may
    assert settings["MLSERVER_PARALLEL_WORKERS"] == "0"  # adaptive batching needs in-process inference
    assert settings["MLSERVER_MODEL_NAME"] == MODEL_NAME
    assert settings["MLSERVER_MODEL_URI"] == DEFAULT_URI == f"models:/{MODEL_NAME}@champion"
    assert settings["MLSERVER_MODEL_IMPLEMENTATION"] == "mlserver_runtime.runtime.StorecastRuntime"
    ports = {settings.get(f"MLSERVER_{kind}_PORT", default)
             for kind, default in (("HTTP", "8080"), ("GRPC", "8081"), ("METRICS", "8082"))}
    assert ports == {"8080", "8081", "8082"} <= {p for a in steps("mlserver", "EXPOSE") for p in a.split()}
    [*_, cmd] = steps("mlserver", "CMD")
    assert json.loads(cmd)[:2] == ["mlserver", "start"]
    folder = json.loads(cmd)[2]
    assert any(a.split()[-1] == folder for a in steps("mlserver", "COPY") if a.startswith("--from=")), \
        f"the models folder {folder} is not in the image"
    if RUNTIME.is_file():
        module, _, cls = settings["MLSERVER_MODEL_IMPLEMENTATION"].rpartition(".")
        tree = ast.parse(source_of(module).read_text())  # type: ignore[union-attr]
        assert any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body), f"no class {cls} in {module}"


def entrypoint(image: str, *args: str, path: str = "") -> subprocess.CompletedProcess:
    run_env = {**os.environ, "STORECAST_IMAGE": image, "PATH": f"{path}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=run_env, timeout=30)


def test_the_entrypoint_runs_mlserver_only_in_its_image(tmp_path: Path) -> None:
    fake = tmp_path / "mlserver"
    fake.write_text('#!/bin/sh\necho "mlserver $*"\n')
    fake.chmod(0o755)
    [*_, cmd] = steps("mlserver", "CMD")
    proc = entrypoint("mlserver", *json.loads(cmd), path=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == " ".join(json.loads(cmd)), proc.stderr
    for image in ("serve", "full"):
        proc = entrypoint(image, "mlserver", "start", ".", path=str(tmp_path))
        assert proc.returncode == 2 and "MLServer image (storecast-mlserver)" in proc.stderr, (image, proc.stderr)
    for component, where in (("predictor", "storecast-serve"), ("transformer", "storecast-serve"),
                             ("deadletter", "storecast-serve"), ("retrain", "full image"),
                             ("dashboard", "full image"), ("storecast", "full image"), ("mlflow", "full image")):
        proc = entrypoint("mlserver", component, "--help")
        assert proc.returncode == 2 and "not in the MLServer image" in proc.stderr and where in proc.stderr, \
            (component, proc.stderr)
    assert "mlserver" in entrypoint("mlserver").stdout


def test_the_serving_images_answer_is_unchanged() -> None:
    proc = entrypoint("serve", "retrain", "--help")
    assert (proc.returncode, proc.stderr) == (2, "'retrain' is not in the serving image (storecast-serve: predictor, "
                                                 "transformer, deadletter only); use the full image (storecast)\n")


def test_make_image_builds_the_three_targets() -> None:
    def dry(*args: str) -> str:
        proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = dry("image")
    for target, tag in (("serve", "localhost/storecast-serve:dev"), ("mlserver", "localhost/storecast-mlserver:dev"),
                        ("full", "localhost/storecast:dev")):
        assert f"podman build --target {target} -t {tag} ." in out, out
    assert "podman build --target mlserver -t reg.test/m:1 ." in dry("image", "MLSERVER_IMAGE=reg.test/m:1")
    smoke = dry("image-smoke", "MLSERVER_IMAGE=reg.test/m:1")
    assert "MLSERVER_IMAGE=reg.test/m:1 bash scripts/image_smoke.sh" in smoke, smoke
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "image_smoke.sh")], timeout=30).returncode == 0
