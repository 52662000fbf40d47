"""The retrain service's accuracy watch: sales appended -> the champion scored -> drifting stores refitted.

``com.storecast.sales.appended`` carries the new rows (``{"rows": [{"Store": "4", "Date": ..., "Sales": ...,
"Open": 1, ...}]}``: the service appends them to the sales store, refusing rows of stores the champion
does not hold unless it runs with ``--keep-unknown-stores``) or says they were appended already
(``{"part": ...}``, ``storecast data append --sales``). Each time the champion is scored
(``pipelines.retrain.drift``), ``/metrics`` updated, and the drifting stores become one retrain job. Its
event comes from the sender ``internal:drift``, which no HTTP caller can be, and its id is an HMAC
of the champion version and the stores under a secret kept in the job store: a repeated append asks
for no second job, and nobody can send that id first to pre-empt the refit.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.data.sales_store import BadSales, SalesUnavailable, read_file
from pipelines.retrain.drift import DriftPolicy, DriftReport, holdout_wape, score
from pipelines.versions.registry import VersionMissing

DRIFT_SOURCE = "storecast.drift"
DRIFT_SENDER = "internal:drift"  # HTTP senders are "id:<identity>" or "anonymous"


def rows_frame(rows: Any) -> pd.DataFrame:
    """Records (``[{"Store": ..., "Date": ..., "Sales": ..., "Open": ...}]``) as a typed sales frame."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise BadSales("data.rows: expected a non-empty list of sales rows (objects with Store, Date, Sales, Open)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        try:
            return read_file(path, "data.rows")
        except SalesUnavailable as exc:
            raise BadSales(str(exc).removeprefix("sales file ")) from None


class Watch:
    """Scores the champion as sales arrive and asks the manager for refits of drifting stores."""

    def __init__(self, manager: Any, policy: DriftPolicy | None = None, groups: dict[str, str] | None = None,
                 refit: bool = True) -> None:
        self.manager, self.policy, self.groups, self.refit = manager, policy or DriftPolicy(), groups or {}, refit
        self.last: DriftReport | None = None

    def appended(self, data: Any) -> dict[str, Any]:
        """Append the event's rows (if any), then ``check``; BadSales for rows that cannot be stored."""
        out: dict[str, Any] = {}
        if isinstance(data, dict) and "rows" in data:
            frame = rows_frame(data["rows"])
            if self.manager.s.dry_run:
                out["would_append"] = len(frame)
            else:
                out["part"] = self.manager.sales.append(frame, known=self._champion_stores(),
                                                        keep_unknown=self.manager.s.keep_unknown)
                out["appended"] = len(frame)
        elif not (isinstance(data, dict) and data.get("part")):
            raise BadSales("data: expected {\"rows\": [...]} (rows to append) or {\"part\": NAME} (appended already)")
        out.update(self.check())
        return out

    def _champion_stores(self) -> list[str] | None:
        """The stores the champion holds (None: no champion yet, nothing to check against)."""
        champion = self.manager.registry.alias("champion")
        return None if champion is None else self.manager.registry.table(str(champion.version)).store_id.tolist()

    def check(self) -> dict[str, Any]:
        """Score the champion on the days after its data; a job for the drifting stores."""
        m = self.manager
        sales = m.sales.load()
        champion = m.registry.alias("champion")
        if champion is None:
            return {"drift": None, "note": "no champion to score"}
        v = str(champion.version)
        try:
            holdout = holdout_wape(m.registry.store_metrics(v))
        except VersionMissing:  # a version without store_metrics.csv: scored, nothing judged
            holdout = {}
        report = score(v, m.registry.table(v), holdout, sales.frame, self.policy, self.groups)
        self.last = report
        m.metrics.drift(report)
        out: dict[str, Any] = {"drift": report.to_dict(self.policy.worst)}
        if report.drifting and self.refit:
            stores = sorted(report.drifting)
            secret = m.store.secret("drift").encode()
            key = hmac.new(secret, f"{v}:{','.join(stores)}".encode(), hashlib.sha256).hexdigest()[:32]
            reasons = ", ".join(f"{s} WAPE {report.stores[s]['wape']:.3f} vs holdout "
                                f"{report.stores[s]['holdout_wape']:.3f}" for s in stores[:10])
            job, _ = m.submit(DRIFT_SOURCE, f"drift-{v}-{key}", stores, f"drift: {reasons}", kind="drift",
                              sender=DRIFT_SENDER)
            out["job"] = job if isinstance(job, dict) else job.view()
        return out
