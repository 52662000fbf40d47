"""``check_invariants(world, step)``: the lifecycle's invariants (DESIGN.md, "Lifecycle"), asserted after every step.

1. calendar: every store's known-ahead calendar (the first file and every push accepted since) is what the
   transformer serves for the days after the last actuals (V1 ``open``/``promo``/``holiday``/``calendar``);
2. closed: a closed day (by the calendar, or by the weekday pattern beyond it) is 0 (value, lower and upper)
   on V1, V1 as a CloudEvent, V2 JSON, V2 binary and gRPC, and every protocol says the same days are closed;
3. actuals: every appended day shows in the dashboard's ``/api/sales`` (with the planner's key);
4. versions: every answer names a version, the champion, whose tags say what changed and why;
5. champion: it moved only through the gate (a few stores) or a promoted rollout (fleet-sized, challenger
   first), and each new champion is derived from the one before (nothing another writer did is lost);
6. nothing lost: every job the test caused ended as expected, the service holds no unfinished or unexpectedly
   failed job, and the sales store (base + parts, read by the one reader) holds every appended row and no
   refused one.

Every check runs; the one assertion lists each broken invariant with a count and its first examples.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

import httpx
import pandas as pd

from pipelines.data.sales_store import SalesStore
from tests.system.clients import Answer, v1, v2_binary, v2_json
from tests.system.world import BEYOND, CAL_END, FEW, FINAL, STORES, World

SHOW = 4
CHANGES = {"first", "refit", "calendar", "carry-over"}
TAGS = ("change", "refitted", "calendar_source", "data_end", "parent_version")


def check_invariants(world: World, step: str) -> None:
    """Settle, ask every protocol once, and assert all six invariants (one message listing every broken one)."""
    world.settle()
    begin = world.next_days(CAL_END)[0]
    end = str((pd.Timestamp(CAL_END) + pd.Timedelta(days=BEYOND)).date())
    key = world.auth("service")
    answers = [v1(world.transformer.url, key, STORES, begin, end),
               v1(world.transformer.url, key, STORES, begin, end, event=True),
               v2_json(world.transformer.url, key, STORES, begin, end),
               v2_binary(f"127.0.0.1:{world.transformer.http_port}", key, STORES, begin, end),
               world.grpc.ask(STORES, begin, end)]
    broken = []
    for name, check in (("calendar", calendar_served), ("closed", closed_is_zero), ("actuals", actuals_shown),
                        ("versions", versions_explained), ("champion", champion_moves), ("lost", nothing_lost)):
        try:
            found = check(world, answers)
        except Exception as exc:  # a check that cannot run is a broken invariant too, said as such
            found = [f"could not be checked: {type(exc).__name__}: {str(exc)[:500]}"]
        if found:
            more = f" (and {len(found) - SHOW} more)" if len(found) > SHOW else ""
            broken.append(f"  [{name}] " + "; ".join(found[:SHOW]) + more)
    assert not broken, (f"after step {step!r} (actuals to {world.ledger.day}, champion "
                        f"{world.alias()}): invariants broken:\n" + "\n".join(broken))


def _grouped(problems: dict[str, list[str]], what: str) -> list[str]:
    """One line per group: how many, and the first example."""
    return [f"{group}: {len(items)} {what} (e.g. {items[0]})" for group, items in problems.items()]


# ---- 1. the calendar ------------------------------------------------------------------------------
def calendar_served(world: World, answers: list[Answer]) -> list[str]:
    served = answers[0]
    if served.error:
        return [f"V1 failed: {served.error}"]
    lost: dict[str, list[str]] = defaultdict(list)
    for (store, day), (is_open, promo, holiday) in sorted(world.ledger.calendar.items()):
        if day <= world.ledger.day:
            continue
        row = served.rows.get((store, day))
        if row is None:
            lost[f"store {store}"].append(f"{day}: no row")
        elif row.calendar != "calendar" or (row.open, row.promo, row.holiday) != (is_open, promo, holiday):
            lost[f"store {store}"].append(
                f"{day} served open={row.open} promo={row.promo} holiday={row.holiday} from {row.calendar!r}, "
                f"known open={is_open} promo={promo} holiday={holiday}")
    return _grouped(lost, f"known-ahead days not served as known (version {served.version})")


# ---- 2. closed days ---------------------------------------------------------------------------------
def closed_is_zero(world: World, answers: list[Answer]) -> list[str]:
    day = world.ledger.day
    closed = {k for k, (is_open, _, _) in world.ledger.calendar.items() if not is_open and k[1] > day}
    after = pd.date_range(pd.Timestamp(CAL_END) + pd.Timedelta(days=1), periods=BEYOND, freq="D")
    closed |= {(s, d.strftime("%Y-%m-%d")) for s in world.month.sunday_closed for d in after if d.dayofweek == 6}
    reference = answers[0]
    found: dict[str, list[str]] = defaultdict(list)
    for a in answers:
        if a.error:
            found[f"{a.protocol} failed"].append(a.error)
            continue
        for store, d in sorted(closed):
            row = a.rows.get((store, d))
            if row is None or row.open:
                found[f"{a.protocol}: closed days answered open"].append(f"store {store} {d}")
        for (store, d), row in sorted(a.rows.items()):
            if not row.open and (row.value, row.lower, row.upper) != (0, 0, 0):
                found[f"{a.protocol}: closed days not 0"].append(
                    f"store {store} {d}: {row.value:.4g} [{row.lower:.4g}, {row.upper:.4g}]")
        if a is not reference and not reference.error:
            differ = [k for k, r in reference.rows.items() if k not in a.rows or a.rows[k].open != r.open]
            if differ:
                found[f"{a.protocol} disagrees with V1 on open days"].append(f"store {differ[0][0]} {differ[0][1]}")
    return _grouped(found, "rows")


# ---- 3. actuals in the dashboard ---------------------------------------------------------------------
def actuals_shown(world: World, answers: list[Answer]) -> list[str]:
    r = httpx.get(f"{world.dashboard.url}/api/sales", params={"stores": ",".join(STORES), "days": "28"},
                  headers=world.auth("planner"), timeout=60)
    if r.status_code != 200:
        return [f"/api/sales: HTTP {r.status_code}: {r.text[:300]}"]
    doc = r.json()
    out = [f"/api/sales says: {doc['error']}"] if doc.get("error") else []
    if doc.get("data_end") != world.ledger.day:
        out.append(f"/api/sales data_end is {doc.get('data_end')!r}; actuals were appended up to {world.ledger.day}")
    if not world.ledger.appended:
        return out
    rows = pd.concat(world.ledger.appended, ignore_index=True)
    rows = rows[rows["Date"] > pd.Timestamp(world.ledger.day) - pd.Timedelta(days=28)]
    missing: dict[str, list[str]] = defaultdict(list)
    for store, group in rows.groupby(rows["Store"].astype(str)):
        shown = doc.get("stores", {}).get(store) or {"dates": [], "sales": []}
        sold = dict(zip(shown["dates"], shown["sales"], strict=True))
        for d, sales in zip(group["Date"].dt.strftime("%Y-%m-%d"), group["Sales"], strict=True):
            if sold.get(d) != float(sales):
                missing[f"store {store}"].append(f"{d}: appended {sales}, shown {sold.get(d)}")
    return out + _grouped(missing, "appended days not shown")


# ---- 4. versions named and explained -------------------------------------------------------------------
def explain(tags: dict[str, str], day: str) -> list[str]:
    """What a version's tags fail to say (see the brief: change, refitted, calendar source, data end, parent)."""
    out = [f"no tag {t!r}" for t in TAGS if t not in tags]
    change = changes(tags)
    if not change or change - CHANGES:
        out.append(f"change {tags.get('change')!r} is not one of {sorted(CHANGES)}")
    n = refitted(tags)
    if n and not change & {"first", "refit"}:
        out.append(f"refits {n} stores but says change={tags.get('change')!r}")
    if "refit" in change and not n:
        out.append("says change=refit but names no refitted store")
    if "first" not in change and not tags.get("parent_version"):
        out.append("names no parent_version")
    end = tags.get("data_end", "")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", end) or end > day:
        out.append(f"data_end {end!r} is not a day up to the last actuals ({day})")
    return out


def changes(tags: dict[str, str]) -> set[str]:
    return {c for c in re.split(r"[,+ ]+", tags.get("change", "")) if c}


def refitted(tags: dict[str, str]) -> int:
    """How many stores the version refitted (``refitted`` lists them, long lists end "... (N stores)")."""
    text = tags.get("refitted", "")
    more = re.search(r"\((\d+) stores\)", text)
    return int(more.group(1)) if more else len([s for s in text.split(",") if s.strip()])


def versions_explained(world: World, answers: list[Answer]) -> list[str]:
    champion = world.alias()
    out, named = [], set()
    for a in answers:
        if a.error:
            continue
        if not a.version:
            out.append(f"{a.protocol} answer names no model_version")
        elif a.version != champion:
            out.append(f"{a.protocol} answered version {a.version}; champion is {champion}")
        named.add(a.version)
    for v in sorted(filter(None, named)):
        out += [f"version {v}: {p}" for p in explain(world.tags(v), world.ledger.day)]
    return out


# ---- 5. how champion moved ------------------------------------------------------------------------
def champion_moves(world: World, answers: list[Answer]) -> list[str]:
    history, challengers = world.watch.history("champion"), world.watch.history("challenger")
    docs = world.rollouts()
    promoted = {str(d.get("promoted_version") or d["version"]): d for d in docs if d["status"] == "promoted"}
    rolled_back = {str(d["version"]) for d in docs if d["status"] == "rolledback"}
    tags: dict[str, dict[str, str]] = {}

    def tags_of(v: str) -> dict[str, str]:
        if v not in tags:
            tags[v] = world.tags(v)
        return tags[v]

    def lineage(v: str) -> list[str]:
        chain = [v]
        while (parent := tags_of(chain[-1]).get("parent_version")) and parent not in chain and len(chain) < 200:
            chain.append(parent)
        return chain

    out = []
    for before, after in itertools.pairwise(history):
        chain = lineage(after)
        if before not in chain:
            out.append(f"champion moved {before} -> {after}, but {after} is not derived from {before} "
                       f"(its lineage: {' <- '.join(chain[:8])}): what {before} brought is lost")
    for v in history[1:]:
        t = tags_of(v)
        n = refitted(t)
        if v in rolled_back:
            out.append(f"version {v} was rolled back, yet became champion")
        if v in promoted:
            canary = str(promoted[v]["version"])
            if canary not in challengers:
                out.append(f"version {v} was promoted by the rollout of {canary}, which was never challenger")
            if tags_of(canary).get("rollout") != "promoted":
                out.append(f"version {v}: its canary {canary} is tagged rollout={tags_of(canary).get('rollout')!r}")
        elif n > FEW:
            out.append(f"version {v} refits {n} stores (fleet-sized: more than {FEW}) and became champion without a "
                       "promoted rollout")
        elif t.get("gate") != "pass" and not (n == 0 and "calendar" in changes(t)):
            out.append(f"version {v} became champion without passing the gate (gate={t.get('gate')!r}, "
                       f"change={t.get('change')!r})")
    return out


# ---- 6. nothing lost -------------------------------------------------------------------------------
def nothing_lost(world: World, answers: list[Answer]) -> list[str]:
    out = []
    for job_id, expected in world.ledger.jobs.items():
        job = world.job(job_id)
        if job.get("status") not in expected.statuses:
            out.append(f"job {job_id} ({expected.what}) is {job.get('status')!r}, expected one of "
                       f"{list(expected.statuses)}: {job.get('error') or ''}")
    for job in world.jobs():
        expected = world.ledger.jobs.get(job["job_id"])
        if job["status"] not in FINAL:
            out.append(f"job {job['job_id']} ({job.get('kind')}, stores {job.get('stores')}) is still "
                       f"{job['status']} after the step settled")
        elif job["status"] == "failed" and (expected is None or "failed" not in expected.statuses):
            out.append(f"job {job['job_id']} ({job.get('kind')}, stores {job.get('stores')}) failed: "
                       f"{job.get('error')}")
    failed = [e for e in world.sink.events() if e["type"] == "com.storecast.retrain.failed"]
    out += [f"retrain.failed event: {e['data']}" for e in failed
            if "failed" not in getattr(world.ledger.jobs.get((e["data"] or {}).get("job_id")), "statuses", ())]
    out += _sales_kept(world)
    return out


def _sales_kept(world: World) -> list[str]:
    frame = SalesStore(str(world.month.base)).load().frame
    stored = dict(zip(zip(frame["Store"].astype(str), frame["Date"].dt.strftime("%Y-%m-%d"), strict=True),
                      frame["Sales"].astype(float), strict=True))
    out = []
    if world.ledger.appended:
        rows = pd.concat(world.ledger.appended, ignore_index=True)
        keys = zip(rows["Store"].astype(str), rows["Date"].dt.strftime("%Y-%m-%d"), rows["Sales"], strict=True)
        lost = [f"store {s} {d}: appended {y}, stored {stored.get((s, d))}" for s, d, y in keys
                if stored.get((s, d)) != float(y)]
        if lost:
            out.append(f"the sales store lost {len(lost)} appended rows (e.g. {lost[0]})")
    kept = [f"store {s} {d}: Sales {y}" for s, d, y in world.ledger.refused if stored.get((s, d)) == float(y)]
    if kept:
        out.append(f"the sales store holds {len(kept)} rows that were refused (e.g. {kept[0]})")
    return out
