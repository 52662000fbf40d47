"""One publish step: inherited configuration, derived versions that keep every store, a gate that gates,
``force``, a parent that is missing or unreachable, and a first version when there is no champion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines.data.sales_csv import write_sales
from pipelines.data.sales_store import SalesStore
from pipelines.data.synth import synthesize
from pipelines.training.fitting import PROPHET_DEFAULTS, FitConfig
from pipelines.versions.publish import GatePolicy, ParentMissing, download_parent, publish, resolve_parent
from pipelines.versions.registry import Registry, RegistryUnavailable
from tests.support import alias, run_cli, start_service, stop

MODEL = "storecast"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("publish")
    sales = synthesize(3, seed=17)
    old = SalesStore(str(write_sales(sales[sales["Date"] <= "2015-07-10"], root / "old.csv.gz"))).load()
    latest = SalesStore(str(write_sales(sales, root / "latest.csv.gz"))).load()
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}", MODEL)
    cfg = FitConfig.preset("seed", holdout_days=28, prophet={**PROPHET_DEFAULTS, "interval_width": 0.8})
    first = publish(old, registry, config=cfg, alias="champion", workers=1)
    assert first.status == "registered" and first.alias == "champion", first.gate
    return {"root": root, "old": old, "latest": latest, "registry": registry, "first": first}


def derive(world: dict, **kwargs):
    parent, tmp = download_parent(world["registry"], "@champion")
    try:
        return publish(world["latest"], world["registry"], parent=parent, workers=1, **kwargs)
    finally:
        tmp.cleanup()


def test_a_derived_version_inherits_the_configuration_and_keeps_every_store(world: dict) -> None:
    reg = world["registry"]
    pub = derive(world, stores=["2"], overrides={"gate_margin": 0.3}, alias="champion")
    assert pub.status == "registered" and pub.refitted == ["2"] and pub.parent_version == world["first"].version
    parent, child = reg.table(world["first"].version), reg.table(pub.version)
    cfg = child.meta["fit_config"]
    # inherited: the model (no regressors), the interval width, the holdout; overridden: the gate margin
    assert cfg["regressors"] == [] and cfg["prophet"]["interval_width"] == 0.8 and cfg["holdout_days"] == 28
    assert cfg["gate_margin"] == 0.3 and child.interval_width == 0.8
    assert child.meta["interval_calibration"] == parent.meta["interval_calibration"]
    assert child.store_id.tolist() == parent.store_id.tolist() == ["1", "2", "3"]
    i1, i2 = (child.store_id.tolist().index(s) for s in ("1", "2"))
    assert child.k[i1] == parent.k[i1] and child.last_day[i2] > parent.last_day[i2]
    tags = MlflowClient(reg.uri).get_model_version(MODEL, pub.version).tags
    assert tags["fit_config_from"] == f"version {world['first'].version}" and tags["stores"] == "3"
    assert tags["refitted"] == "2" and tags["gate"] == "pass"
    manifest = json.loads((reg.download(pub.version, world["root"] / "dl") / "manifest.json").read_text())
    assert manifest["fit_config"] == cfg


def test_up_to_date_unless_forced(world: dict) -> None:
    assert derive(world, stores=["2"]).status == "up_to_date"
    forced = derive(world, stores=["2"], force=True)
    assert forced.status == "registered" and forced.refitted == ["2"] and forced.alias is None


def test_the_gate_moves_no_alias_when_it_fails(world: dict) -> None:
    reg, champion = world["registry"], alias(world["registry"].uri, MODEL)
    strict = derive(world, stores=["3"], gate=GatePolicy(min_pass_share=1.01), alias="champion")
    assert strict.status == "registered" and strict.alias is None and not strict.gate.passed
    assert "evaluated stores pass their holdout gate" in strict.gate.reasons[0]
    tags = MlflowClient(reg.uri).get_model_version(MODEL, strict.version).tags
    assert tags["gate"] == "fail" and "holdout gate" in tags["gate_reasons"]
    wild = derive(world, stores=["1"], force=True, gate=GatePolicy(plausible_factor=0.3), alias="champion")
    assert wild.alias is None and set(wild.gate.implausible) == {"1"} and "plausible" in wild.gate.reasons[0]
    assert alias(reg.uri, MODEL) == champion


def test_a_version_that_would_drop_stores_fails_unless_they_are_listed(world: dict) -> None:
    reg = world["registry"]
    champion = reg.table(alias(reg.uri, MODEL))
    small = publish(world["latest"], reg, stores=["1"], config=FitConfig.preset("seed"), alias="champion",
                    champion=champion, workers=1)
    assert small.alias is None and small.gate.dropped == ["2", "3"] and "dropped" in small.gate.reasons[0]
    listed = publish(world["latest"], reg, stores=["1"], config=FitConfig.preset("seed"), alias="challenger",
                     champion=champion, drop=("2", "3"), workers=1)
    assert listed.gate.passed and listed.alias == "challenger"


def test_a_champion_moved_while_fitting_is_built_on(world: dict) -> None:
    """A calendar push (or another job) moved champion during the fit: the refit lands on that version."""
    reg = world["registry"]
    parent, tmp = download_parent(reg, "@champion")
    moved_to = world["first"].version
    assert parent.version != moved_to
    try:
        pub = publish(world["latest"], reg, parent=parent, stores=["3"], force=True, workers=1, alias="champion",
                      parent_alias="champion", while_fitting=lambda: reg.set_alias("champion", moved_to))
    finally:
        tmp.cleanup()
    assert pub.parent_version == moved_to and alias(reg.uri, MODEL) == pub.version
    assert MlflowClient(reg.uri).get_model_version(MODEL, pub.version).tags["parent_version"] == moved_to


def test_a_missing_parent_fails_clearly_an_unreachable_one_is_retried(world: dict, monkeypatch) -> None:
    with pytest.raises(ParentMissing, match=r"parent version 99 .* does not exist"):
        resolve_parent(world["registry"], "99", world["root"] / "p99")
    assert resolve_parent(world["registry"], "@nope", world["root"] / "pn") is None  # no such alias: no parent
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryUnavailable):
        Registry("http://127.0.0.1:9", MODEL).alias("champion")  # down is not "no champion"
    out = run_cli("train", "--data", str(world["root"] / "latest.csv.gz"), "--tracking-uri", world["registry"].uri,
                  "--parent", "@champion", "--stores", "3", "--force", "--json", "--workers", "1", "--no-progress",
                  "--alias", "", cwd=world["root"])
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["refitted"] == 1 and answer["parent_version"] == alias(world["registry"].uri, MODEL)


def test_no_champion_a_retrain_builds_every_store(tmp_path: Path) -> None:
    """The README's retrain example against an empty registry: a first version of every store, not of store 2."""
    data = write_sales(synthesize(3, seed=8), tmp_path / "sales.csv.gz")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    svc = start_service(data, uri, MODEL, tmp_path)
    try:
        out = run_cli("retrain", "--store", "2", "--url", svc.url, "--wait", "--json", "--timeout", "240", cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": uri})
        job = json.loads(out.stdout.strip().splitlines()[-1])
        assert job["status"] == "done" and job["kind"] == "bootstrap", job
        assert job["result"]["store_ids"] == ["1", "2", "3"] and job["result"]["promoted"] == "champion"
        assert MlflowClient(uri).get_model_version(MODEL, job["result"]["version"]).tags["stores"] == "3"
        assert np.array_equal(Registry(uri, MODEL).table(job["result"]["version"]).store_id, ["1", "2", "3"])
    finally:
        stop(svc.proc)
