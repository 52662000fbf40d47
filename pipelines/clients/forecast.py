"""A small client of the business API: ``storecast forecast`` prints a table and draws a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.contract import MODEL_NAME

DEFAULT_URL = "http://127.0.0.1:8080"


def request_forecast(url: str, store: str, begin: str | None = None, end: str | None = None,
                     model: str = MODEL_NAME, timeout: float = 30.0, api_key: str | None = None) -> dict[str, Any]:
    """POST one store's business request (V1) and return its prediction (request echo + rows)."""
    instance = {"storeId": store, **({"beginDate": begin} if begin else {}), **({"endDate": end} if end else {})}
    r = httpx.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json={"instances": [instance]}, timeout=timeout,
                   headers={"x-api-key": api_key} if api_key else None)
    if r.status_code >= 400:
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text
        raise RuntimeError(f"HTTP {r.status_code}: {message}")
    return r.json()["predictions"][0]


def table(prediction: dict[str, Any]) -> str:
    """The forecast as an aligned text table: the numbers are the API's (a closed day is 0), ``calendar`` where
    the day's calendar came from (``calendar``, ``default`` beyond it, ``what-if``) and the notes what it says
    (closed, promotion, holiday)."""
    req = prediction["request"]
    lines = [f"store {req['store_id']}, {req['begin_date']} .. {req['end_date']}",
             f"{'date':<16}{'forecast':>12}{'lower':>12}{'upper':>12}  {'calendar':<9} notes"]
    for row in prediction["forecast"]:
        day = np.datetime64(row["timestamp"][:10]).item().strftime("%Y-%m-%d %a")
        source = row.get("calendar") or "-"
        lines.append(f"{day:<16}{row['value']:>12.1f}{row['lower']:>12.1f}{row['upper']:>12.1f}  {source:<9} "
                     f"{_note(row)}".rstrip())
    return "\n".join(lines)


def _note(row: dict[str, Any]) -> str:
    source = row.get("calendar", "")
    holiday = row.get("holiday", "0")
    on_holiday = holiday not in ("0", None)
    if row.get("open", True):
        notes = []
    elif source in ("calendar", "what-if"):
        notes = ["closed"]
    else:  # beyond the calendar: the store's habit on the holiday or its weekday pattern closed it
        notes = ["usually closed on this holiday" if on_holiday else "usually closed"]
    if row.get("promo"):
        notes.append("promotion")
    if on_holiday:
        notes.append(f"holiday {holiday}")
    return ", ".join(notes)


def plot(prediction: dict[str, Any], path: str | Path) -> Path:
    """A PNG of the forecast with its interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = prediction["forecast"]
    days = np.array([r["timestamp"][:10] for r in rows], dtype="datetime64[D]")
    value = np.array([r["value"] for r in rows])
    is_open = np.array([r.get("open", True) for r in rows], dtype=bool)
    lower, upper = np.array([r["lower"] for r in rows]), np.array([r["upper"] for r in rows])
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.fill_between(days, lower, upper, where=is_open, alpha=0.25, color="tab:blue", label="prediction interval")
    lone = is_open & ~np.r_[False, is_open[:-1]] & ~np.r_[is_open[1:], False]  # no band without a neighbour
    if lone.any():
        ax.errorbar(days[lone], value[lone], yerr=[value[lone] - lower[lone], upper[lone] - value[lone]],
                    fmt="none", ecolor="tab:blue", alpha=0.4, elinewidth=6)
    ax.plot(days[is_open], value[is_open], marker="o", color="tab:blue", label="forecast")
    if not is_open.all():
        ax.plot(days[~is_open], value[~is_open], "x", color="tab:gray", markersize=8, label="closed")
    promo = np.array([bool(r.get("promo")) for r in rows])
    for k, day in enumerate(days[promo]):
        ax.axvspan(day - np.timedelta64(12, "h"), day + np.timedelta64(12, "h"), color="tab:orange", alpha=0.12,
                   label="promotion" if k == 0 else None)
    holiday = np.array([r.get("holiday", "0") not in ("0", None) for r in rows])
    for k, day in enumerate(days[holiday]):
        ax.axvline(day, color="tab:red", linestyle=":", label="state holiday" if k == 0 else None)
    beyond = np.array([r.get("calendar") == "default" for r in rows])
    if beyond.any():
        ax.axvspan(days[beyond][0] - np.timedelta64(12, "h"), days[-1] + np.timedelta64(12, "h"), color="gray",
                   alpha=0.08, label="beyond the calendar (defaults)")
    req = prediction["request"]
    ax.set_title(f"storecast: store {req['store_id']}, {req['begin_date']} .. {req['end_date']}")
    ax.set_ylabel("sales")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %d %b"))
    fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
