"""One trained version and one local stack (predictor + transformer on 127.0.0.1), shared by the
conformance and hostile-input tests of a session (trained and started once, stopped at exit)."""

from __future__ import annotations

import atexit
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pipelines.stack import LocalStack, Service

MODEL = "storecast"
STORES = 4


@dataclass
class Served:
    """The shared stack and what the tests need to know about its version."""

    stack: LocalStack
    version: str
    table: Any  # predictor.table.ParamTable of the version
    root: Path

    @property
    def predictor(self) -> Service:
        return self.stack.predictors[0]

    @property
    def transformer(self) -> Service:
        return self.stack.transformer

    def server(self, kind: str) -> Service:
        return self.predictor if kind == "predictor" else self.transformer

    @property
    def stores(self) -> list[str]:
        return self.table.store_id.tolist()

    @property
    def data_end(self) -> str:
        return str(np.datetime64(int(self.table.last_day.max()), "D"))

    def day(self, ahead: int) -> str:
        """The ISO date ``ahead`` days after the version's last day of data."""
        return str(np.datetime64(int(self.table.last_day.max()) + ahead, "D"))

    def healthy(self) -> bool:
        """Both servers still answer a forecast."""
        body = {"instances": [{"storeId": self.stores[0], "beginDate": self.day(1), "endDate": self.day(3)}]}
        r = httpx.post(f"{self.transformer.url}/v1/models/{MODEL}:predict", json=body, timeout=30)
        p = httpx.post(f"{self.predictor.url}/v1/models/{MODEL}:predict", timeout=30,
                       json={"instances": [{"store_id": self.stores[0], "ds": self.day(1)}]})
        return r.status_code == 200 and p.status_code == 200 and self.stack.predictors[0].proc.poll() is None


_SERVED: Served | None = None


def served(tmp_path_factory: Any) -> Served:
    """The session's stack: 4 synthetic stores with their known-ahead calendar, trained once."""
    global _SERVED
    if _SERVED is None:
        from pipelines.data.calendar import read_calendar
        from pipelines.data.sales_csv import write_sales
        from pipelines.data.synth import synthesize_with_calendar
        from tests.helpers_predictor import make_registry

        root = tmp_path_factory.mktemp("served")
        sales, calendar = synthesize_with_calendar(STORES, seed=5, calendar_days=40)
        cal = read_calendar(write_sales(calendar, root / "calendar.csv.gz"))
        registry = make_registry(root / "registry", sales, calendar=cal)
        stack = LocalStack(f"models:/{MODEL}@champion", registry.uri, log_dir=root / "logs",
                           predictor_args=["--enable_latency_logging", "false"],
                           transformer_args=["--enable_latency_logging", "false", "--watch-seconds", "1"])
        stack.start(timeout=180)
        atexit.register(stack.stop)
        deadline = time.monotonic() + 30  # the transformer learns the predictor's version within a second
        while "versions" not in httpx.get(f"{stack.transformer.url}/v2/models/{MODEL}").json():
            assert time.monotonic() < deadline, "the transformer never learned the predictor's version"
            time.sleep(0.1)
        _SERVED = Served(stack, registry.version, registry.table, root)
    return _SERVED
