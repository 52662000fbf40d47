"""The backtest's outputs: ``report.md`` (the table, then each window's worst days, stores and special days),
``results.json`` (every figure, the machine's load, the git revision, the configuration) and one PNG per window
(the fleet's daily total: actual, served with its band, LightGBM, naive; and each method's daily WAPE)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

LABELS = {"served": "served", "lightgbm": "LightGBM", "naive": "seasonal naive"}
FEW = 0.2  # a day with fewer scored rows than this share of the most is left out of the plot
KINDS = {"christmas_eve": "Christmas Eve", "new_years_eve": "New Year's Eve", "before_holiday": "day before a holiday",
         "before_closure": "day before a closure (not Sunday)", "after_christmas": "first 2 open days after Christmas",
         "after_new_year": "first 2 open days after New Year"}


def pct(v: Any, digits: int = 1, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v * 100:{'+' if sign else ''}.{digits}f} %"


def num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def table_rows(windows: list[dict[str, Any]]) -> list[str]:
    """The summary table: one row per window."""
    lines = ["| window | served WAPE | RMSPE | bias | 95 % coverage | LightGBM WAPE | LightGBM RMSPE | naive WAPE "
             "| stores failing | trainer's gate failures | rows (stores) scored | largest forecast / best day |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in windows:
        m = w["methods"]
        lg, nv = m.get("lightgbm", {}), m.get("naive", {})
        big = w["largest_forecast"]["served"]
        lines.append(
            f"| {w['window']} .. {w['end']} | {pct(m['served']['wape'])} | {num(m['served']['rmspe'])} | "
            f"{pct(m['served']['bias'], sign=True)} | {pct(m['served']['coverage'])} | {pct(lg.get('wape'))} | "
            f"{num(lg.get('rmspe'))} | {pct(nv.get('wape'))} | {w.get('stores_failing', '-')} | "
            f"{len(w['trainer']['gate_failed'])} | {w['rows_scored']:,} ({w['stores_scored']}) | "
            f"{num(big.get('ratio'), 2)} (store {big.get('store', '-')}, {big.get('date', '-')}) |")
    return lines


def window_section(w: dict[str, Any]) -> list[str]:
    methods = [k for k in LABELS if k in w["methods"]]
    lines = [f"## {w['window']} .. {w['end']} (cutoff {w['cutoff']})", ""]
    lines.append(f"![{w['window']}]({w['plot']})" if w.get("plot") else "")
    lo = w["left_out"]
    reasons = "; ".join(f"{why}: {v['rows']} rows of {len(v['stores'])} stores"
                        for why, v in lo["served_model_without_answer"].items()) or "none"
    lines += ["", f"Scored {w['rows_scored']:,} rows of {w['stores_scored']} stores (open, sales > 0). Not scored: "
              f"{lo['rows_closed']:,} closed rows, {lo['rows_open_without_sales']:,} open rows without sales; open "
              f"rows with sales the served model has no answer for: {reasons}. Trainer: {w['trainer']['stores']} "
              f"stores in the version, {len(w['trainer']['failed'])} left out, {len(w['trainer']['gate_failed'])} "
              f"failing its gate{_listed(w['trainer']['gate_failed'])}.", ""]
    if w.get("stores_failing_list"):
        lines += [f"Stores failing the gate in the window (WAPE > 1.1 x naive): {w['stores_failing']}"
                  f"{_listed(w['stores_failing_list'], 30)}.", ""]
    head = " | ".join(f"{LABELS[m]} WAPE" for m in methods)
    for key, title in (("worst_days", "Worst 10 days (pooled served WAPE)"),
                       ("worst_stores", "Worst 10 stores (served WAPE)")):
        col = "date" if key == "worst_days" else "store"
        lines += [f"**{title}**", "", f"| {col} | rows | {head} | served bias | coverage |",
                  "|---|---:|" + "---:|" * len(methods) + "---:|---:|"]
        for r in w[key]:
            cells = " | ".join(pct(r.get(f"{m}_wape")) for m in methods)
            lines.append(f"| {r[col]} | {r['rows']} | {cells} | {pct(r['served_bias'], sign=True)} | "
                         f"{pct(r['served_coverage'])} |")
        lines.append("")
    if w["special_days"]:
        head_b = " | ".join(f"{LABELS[m]} bias" for m in methods)
        lines += ["**Special days**", "", f"| day | rows (stores) | {head_b} | served WAPE | coverage |",
                  "|---|---:|" + "---:|" * len(methods) + "---:|---:|"]
        for kind, e in w["special_days"].items():
            cells = " | ".join(pct(e.get(f"{m}_bias"), sign=True) for m in methods)
            lines.append(f"| {KINDS.get(kind, kind)} | {e['rows']} ({e['stores']}) | {cells} | "
                         f"{pct(e['served_wape'])} | {pct(e['served_coverage'])} |")
        lines.append("")
    big = " ".join(f"{LABELS[m]}: {num(v.get('ratio'), 2)} (store {v.get('store', '-')} on {v.get('date', '-')}, "
                   f"{num(v.get('forecast'), 0)} vs best day {num(v.get('best_day'), 0)}, {v.get('above_3x', 0)} "
                   "forecasts above 3x)." for m, v in w["largest_forecast"].items() if v.get("ratio") is not None)
    lines += [f"Largest forecast / the store's best day before the cutoff: {big}", ""]
    return lines


def _listed(items: list[str], most: int = 15) -> str:
    if not items:
        return ""
    return ": " + ", ".join(items[:most]) + (" ..." if len(items) > most else "")


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """``report.md`` from the results."""
    c = results["config"]
    lines = ["# storecast backtest", "",
             f"{len(results['windows'])} windows of {c['days']} days; {c['stores'] or 'all'} stores; model "
             f"`{c['model']}`; git {results['git']['revision'] or '?'}"
             f"{' (modified)' if results['git']['dirty'] else ''}; "
             f"{results['wall_seconds'] / 60:.1f} min on {c['workers']} workers, load average "
             f"{' / '.join(f'{x:.2f}' for x in results['load_average']['start'])} at the start, "
             f"{' / '.join(f'{x:.2f}' for x in results['load_average']['end'])} at the end.", "",
             "Each window: trained at the cutoff on the sales before it with the window's known-ahead calendar, "
             "served on loopback, asked through the business API; every method scored on the same rows (open "
             "days with sales of the stores the served version holds). Bias: sum(forecast - actual) / sum(actual). "
             "Stores failing: served WAPE above 1.1 x the seasonal naive's in the window. "
             f"Reference: {results['reference']}", "", *table_rows(results["windows"]), ""]
    for w in results["windows"]:
        lines += window_section(w)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def write_json(out: Path, results: dict[str, Any]) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=_plain, allow_nan=False) + "\n")
    return path


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON: {type(v).__name__}")


def clean(v: Any) -> Any:
    """``v`` with NaN and infinities as None (strict JSON)."""
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def plot_window(daily: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels: the fleet's daily total (actual, served with the sum of the stores' bands, LightGBM, naive)
    and each method's daily WAPE; days when fewer than ``FEW`` of the scored stores are open (Sundays, holidays)
    are gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    few = daily["rows"] < FEW * daily["rows"].max()
    daily = daily.astype(float).mask(few)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    x = daily.index
    top.fill_between(x, daily["served_lower"], daily["served_upper"], color="tab:blue", alpha=0.15,
                     label="served 95 % band (sum of the stores')")
    top.plot(x, daily["actual"], color="black", lw=2, marker=".", label="actual")
    styles = {"served": ("tab:blue", "-"), "lightgbm": ("tab:orange", "--"), "naive": ("tab:gray", ":")}
    for m, (color, ls) in styles.items():
        if m in daily:
            top.plot(x, daily[m], color=color, ls=ls, lw=1.5, marker=".", label=LABELS[m])  # lone days show
            bottom.plot(x, daily[f"{m}_wape"] * 100, color=color, ls=ls, lw=1.5, marker=".", label=LABELS[m])
    top.set_ylabel("fleet sales per day (scored rows)")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title}" + (f" ({int(few.sum())} days with under {FEW:.0%} of the stores open left out)"
                                if few.any() else ""), fontsize=10)
    bottom.set_ylabel("daily WAPE (%)")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
