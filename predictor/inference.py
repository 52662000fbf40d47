"""One request to numbers, whatever serves it: the part of inference the KServe model and the MLServer runtime share.

Both servers decode a request with ``predictor.codec`` into :class:`~predictor.codec.Rows`, then call these
functions on the snapshot their :class:`~predictor.loader.Loader` holds, then wrap the arrays in their own
response types (``predictor.model`` for KServe, ``mlserver_runtime.runtime`` for MLServer). So a request
has one answer, to the bit, on either stack; nothing here imports a serving framework.

Bad requests raise ``RequestError`` with a message naming the input and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from predictor.codec import ALL_OUTPUTS, OUTPUTS, Rows
from predictor.request_values import RequestError
from predictor.snapshot import Snapshot
from predictor.table import UnknownStoresError
from serving.contract import MAX_DAYS_AHEAD, PREDICTOR_INPUTS, PREDICTOR_OUTPUTS, iso

PLATFORM = "storecast_prophet_numpy"  # the V2 metadata's platform


def metadata(name: str, version: str | None) -> dict[str, Any]:
    """The V2 model metadata (``GET /v2/models/<name>``): the contract's inputs and outputs, the version served."""
    md: dict[str, Any] = {"name": name, "platform": PLATFORM,
                          "inputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1]} for t in PREDICTOR_INPUTS],
                          "outputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1]}
                                      for t in PREDICTOR_OUTPUTS]}
    if version:
        md["versions"] = [version]
    return md


def requested_outputs(names: Sequence[str] | None) -> tuple[str, ...]:
    """The outputs a V2 request names (``yhat``, ``yhat_lower``, ``yhat_upper`` when it names none)."""
    if not names:
        return tuple(OUTPUTS)
    unknown = [name for name in names if name not in ALL_OUTPUTS]
    if unknown:
        raise RequestError(f"unknown output {', '.join(map(repr, unknown))}: the outputs are {', '.join(ALL_OUTPUTS)}")
    return tuple(names)


def list_stores(snapshot: Snapshot) -> tuple[list[str], dict[str, Any]]:
    """The stores the snapshot serves (in its order) and the response parameters ``stores`` and ``data_end``."""
    ids = snapshot.table.store_id.tolist()
    return ids, {"stores": len(ids), "data_end": str(snapshot.table.meta.get("data_end", ""))}


def locate(rows: Rows, snapshot: Snapshot, max_days_ahead: int = MAX_DAYS_AHEAD) -> np.ndarray:
    """Each row's index in the snapshot's table, once every store is known and every day within reach."""
    try:
        index = snapshot.rows(rows.store_id)
        if rows.repeat is not None:
            index = np.repeat(index, rows.repeat)
    except UnknownStoresError as exc:
        shard = f", shard {snapshot.shard}" if snapshot.shard else ""
        raise RequestError(f"{exc} (not among the {len(snapshot.table)} stores of model version "
                           f"{snapshot.version}{shard})") from None
    if len(index):
        ahead = rows.days - snapshot.table.last_day[index]
        far = np.flatnonzero(ahead > max_days_ahead)
        if len(far):
            i = int(far[0])
            where, store = rows.where(i)
            raise RequestError(f"{where}: {iso(rows.days[i])} is {int(ahead[i])} days after the last day "
                               f"of data of store {store!r} ({iso(snapshot.table.last_day[index[i]])}); "
                               f"the limit is {max_days_ahead} (--max-days-ahead)")
    return index


def evaluate(rows: Rows, snapshot: Snapshot, names: tuple[str, ...] = OUTPUTS,
             max_days_ahead: int = MAX_DAYS_AHEAD) -> dict[str, np.ndarray]:
    """The named outputs of every row, in one vectorized evaluation."""
    index = locate(rows, snapshot, max_days_ahead)
    return snapshot.outputs(rows.store_id, rows.days, names, rows.promo, rows.open, index, rows.group())
