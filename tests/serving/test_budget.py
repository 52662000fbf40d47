"""``serving.budget.RowBudget`` as the servers use it: pure asyncio, no server, no sleeps that assert speed.

Large requests (more than ``small`` rows) hold their rows while they run, at most ``limit`` at once, in
arrival order; one larger than the limit runs alone; small ones never wait; a waiter that times out is
refused with 503 + Retry-After and leaves nothing behind; a cancelled waiter leaves nothing behind;
limit 0 is unbounded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from serving.budget import RowBudget
from serving.errors import Unavailable, failure_of

LIMIT = 10_000


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Run one scenario on a fresh event loop; a budget that deadlocks fails the test instead of hanging it."""

    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


async def settle(rounds: int = 20) -> None:
    """Let every runnable task take its steps (a grant passes a future, a shield and wait_for's waiter)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Holder:
    """A request that holds ``rows`` of ``budget`` from the moment it is granted until ``leave`` is set."""

    def __init__(self, budget: RowBudget, rows: int, name: str, log: list[str] | None = None) -> None:
        self.budget, self.rows, self.name = budget, rows, name
        self.log = log if log is not None else []
        self.entered = asyncio.Event()
        self.leave = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.budget.hold(self.rows):
                self.log.append(self.name)
                self.entered.set()
                await self.leave.wait()
        except Unavailable as exc:
            self.error = exc

    @property
    def granted(self) -> bool:
        return self.entered.is_set()

    async def finish(self) -> None:
        self.leave.set()
        await self.task


# ---- the limit --------------------------------------------------------------------------------------
def test_peak_never_exceeds_the_limit_under_many_concurrent_large_holders() -> None:
    async def scenario() -> tuple[int, int, int, int, RowBudget]:
        budget = RowBudget(LIMIT, small=4096, wait=30)
        rng = random.Random(11)
        held = {"rows": 0, "max_rows": 0, "count": 0, "max_count": 0}

        async def request(rows: int, pause: int) -> None:
            async with budget.hold(rows):
                held["rows"] += rows
                held["count"] += 1
                held["max_rows"] = max(held["max_rows"], held["rows"])
                held["max_count"] = max(held["max_count"], held["count"])
                # every running holder is counted (and those granted whose task has not run yet)
                assert held["rows"] <= budget.used <= LIMIT
                for _ in range(pause):  # hold across loop turns, so the others really compete
                    await asyncio.sleep(0)
                held["rows"] -= rows
                held["count"] -= 1

        sizes = [rng.randint(4097, 6000) for _ in range(60)]
        await asyncio.gather(*(request(rows, rng.randint(1, 6)) for rows in sizes))
        return held["max_rows"], held["max_count"], budget.peak, budget.used, budget

    max_rows, max_count, peak, used, _ = run(scenario)
    assert max_rows <= LIMIT and peak <= LIMIT
    assert peak == max_rows  # peak records what was really held at once
    assert max_count == 2  # two of 4,097..6,000 rows fit in 10,000, three never do: a budget, not a lock
    assert used == 0


def test_holders_that_fit_together_run_together() -> None:
    async def scenario() -> tuple[list[bool], int, int]:
        budget = RowBudget(LIMIT, small=100)
        a, b = Holder(budget, 5000, "a"), Holder(budget, 5000, "b")
        c = Holder(budget, 1, "c")  # small: not counted
        await settle()
        together = [a.granted, b.granted, c.granted]
        used = budget.used
        for h in (a, b, c):
            await h.finish()
        return together, used, budget.used

    together, used, after = run(scenario)
    assert together == [True, True, True]
    assert used == 10_000 and after == 0


# ---- arrival order ----------------------------------------------------------------------------------
def test_waiters_are_granted_in_arrival_order() -> None:
    async def scenario() -> tuple[list[str], list[bool]]:
        budget = RowBudget(LIMIT, small=100)
        log: list[str] = []
        first = Holder(budget, LIMIT, "first", log)
        await settle()
        waiters = []
        for i in range(6):  # each needs more than half the budget: they can only run one by one
            waiters.append(Holder(budget, 6000 + 100 * (i % 3), f"w{i}", log))
            await settle()
        waiting = [w.granted for w in waiters]
        await first.finish()
        for w in waiters:  # release each as soon as it (and only it) runs
            await settle()
            assert [x.granted for x in waiters].count(True) == waiters.index(w) + 1, log
            await w.finish()
        return log, waiting

    log, waiting = run(scenario)
    assert waiting == [False] * 6
    assert log == ["first", "w0", "w1", "w2", "w3", "w4", "w5"]


def test_a_later_request_that_fits_does_not_overtake_an_earlier_waiter() -> None:
    async def scenario() -> list[tuple[str, bool, bool, int]]:
        budget = RowBudget(LIMIT, small=100)
        log: list[str] = []
        holder = Holder(budget, 6000, "holder", log)
        await settle()
        big = Holder(budget, 8000, "big", log)  # 6,000 + 8,000 > 10,000: waits
        await settle()
        late = Holder(budget, 3000, "late", log)  # 6,000 + 3,000 fits, but "big" came first
        await settle()
        states = [("both waiting", big.granted, late.granted, budget.used)]
        await holder.finish()
        await settle()
        states.append(("big runs, late waits", big.granted, late.granted, budget.used))  # 8,000 + 3,000 > limit
        await big.finish()
        await settle()
        states.append(("late runs", big.granted, late.granted, budget.used))
        await late.finish()
        assert log == ["holder", "big", "late"]
        return states

    states = run(scenario)
    assert states == [("both waiting", False, False, 6000), ("big runs, late waits", True, False, 8000),
                      ("late runs", True, True, 3000)]


# ---- small requests ---------------------------------------------------------------------------------
def test_small_requests_never_wait_even_when_the_budget_is_full() -> None:
    async def scenario() -> dict[str, Any]:
        budget = RowBudget(LIMIT, small=4096, wait=30)
        holder = Holder(budget, LIMIT, "holder")
        await settle()
        queued = [Holder(budget, 5000, f"q{i}") for i in range(3)]  # a queue in front of everyone
        await settle()
        used_before = budget.used
        entered = []
        for rows in (1, 7, 366, 4096):  # up to ``small`` inclusive: entered without giving up the loop
            cm = budget.hold(rows)
            step = cm.__aenter__()
            try:
                step.send(None)  # would yield (suspend) if it had to wait
            except StopIteration:
                entered.append(rows)
            else:  # pragma: no cover - the failure case: it suspended
                step.close()
                continue
            await cm.__aexit__(None, None, None)
        # and through the public form, concurrently with the full budget and the queue
        async def small() -> int:
            async with budget.hold(4096):
                return budget.used

        inside = await asyncio.wait_for(asyncio.gather(*(small() for _ in range(20))), 5)
        over = Holder(budget, 4097, "just over small")  # one row more: a large request, in the queue
        await settle()
        out = {"entered": entered, "used_before": used_before, "inside": set(inside), "used_after": budget.used,
               "queued_granted": [q.granted for q in queued], "over_granted": over.granted}
        await holder.finish()
        for h in (*queued, over):
            await settle()
            await h.finish()
        out["end"] = budget.used
        return out

    out = run(scenario)
    assert out["entered"] == [1, 7, 366, 4096]
    assert out["used_before"] == LIMIT and out["inside"] == {LIMIT} and out["used_after"] == LIMIT  # never counted
    assert out["queued_granted"] == [False, False, False] and out["over_granted"] is False
    assert out["end"] == 0


# ---- larger than the limit --------------------------------------------------------------------------
def test_a_request_larger_than_the_limit_runs_alone() -> None:
    async def scenario() -> list[tuple[str, ...]]:
        budget = RowBudget(LIMIT, small=100)
        log: list[str] = []
        a = Holder(budget, 3000, "a", log)
        await settle()
        huge = Holder(budget, 25_000, "huge", log)  # 2.5 times the limit
        await settle()
        c = Holder(budget, 3000, "c", log)  # would fit next to "a", but arrives after "huge"
        await settle()
        states: list[tuple[Any, ...]] = [("a holds", huge.granted, c.granted, budget.used)]
        await a.finish()
        await settle()
        states.append(("huge alone", huge.granted, c.granted, budget.used, budget.peak))
        await huge.finish()
        await settle()
        states.append(("c after", c.granted, budget.used))
        await c.finish()
        states.append(("log", *log))
        # with nothing held, one larger than the limit is granted at once (no deadlock)
        alone = Holder(budget, 10 * LIMIT, "alone")
        await settle()
        states.append(("nothing held", alone.granted, budget.used))
        await alone.finish()
        states.append(("end", budget.used))
        return states

    assert run(scenario) == [("a holds", False, False, 3000), ("huge alone", True, False, 25_000, 25_000),
                             ("c after", True, 3000), ("log", "a", "huge", "c"),
                             ("nothing held", True, 10 * LIMIT), ("end", 0)]


# ---- waiting too long -------------------------------------------------------------------------------
def test_a_wait_past_the_limit_is_refused_with_retry_after_and_leaves_nothing_held() -> None:
    async def scenario() -> dict[str, Any]:
        budget = RowBudget(LIMIT, small=100, wait=0.05)
        holder = Holder(budget, 8000, "holder")
        await settle()
        with pytest.raises(Unavailable) as info:
            async with budget.hold(5000):
                raise AssertionError("granted although the budget was full")
        out: dict[str, Any] = {"exc": info.value, "used_while_held": budget.used}
        await holder.finish()
        out["used_after"] = budget.used
        budget.wait = 30
        later = Holder(budget, LIMIT, "later")  # the whole budget: granted only if nothing leaked
        await settle()
        out["later"], out["later_used"] = later.granted, budget.used
        await later.finish()
        out["end"] = budget.used
        return out

    out = run(scenario)
    exc: Unavailable = out["exc"]
    failure = failure_of(exc)
    assert failure.status == 503 and failure.grpc_code == "UNAVAILABLE"
    assert int(failure.headers["retry-after"]) >= 1 and exc.retry_after >= 1
    assert "--max-inflight-rows" in exc.message and "10,000" in exc.message and "5,000" in exc.message
    assert out["used_while_held"] == 8000 and out["used_after"] == 0
    assert out["later"] is True and out["later_used"] == LIMIT and out["end"] == 0


def test_a_waiter_at_the_head_that_times_out_lets_the_next_one_in() -> None:
    """The refused head of the queue must not block the ones behind it until the next release."""

    async def scenario() -> dict[str, Any]:
        budget = RowBudget(LIMIT, small=100, wait=0.05)
        holder = Holder(budget, 6000, "holder")
        await settle()
        head = Holder(budget, 8000, "head")  # cannot fit next to the holder; gives up after 0.05 s
        await settle()
        budget.wait = 30  # the next waiter is patient
        behind = Holder(budget, 3000, "behind")  # fits next to the holder, queued behind "head"
        await settle()
        out: dict[str, Any] = {"behind_before": behind.granted}
        await head.task  # refused
        await settle()
        out.update(head_error=head.error, head_granted=head.granted, behind_after=behind.granted,
                   used=budget.used, holder_still=not holder.task.done())
        await behind.finish()
        await holder.finish()
        out["end"] = budget.used
        return out

    out = run(scenario)
    assert out["behind_before"] is False
    assert isinstance(out["head_error"], Unavailable) and out["head_granted"] is False
    assert out["holder_still"] and out["behind_after"] is True and out["used"] == 9000
    assert out["end"] == 0


def test_many_refused_waiters_leave_the_budget_whole() -> None:
    async def scenario() -> tuple[int, int, int, int]:
        budget = RowBudget(LIMIT, small=100, wait=0.02)
        holder = Holder(budget, LIMIT, "holder")
        await settle()
        waiters = [Holder(budget, 4000 + i, f"w{i}") for i in range(25)]
        await asyncio.gather(*(w.task for w in waiters))
        refused = sum(isinstance(w.error, Unavailable) for w in waiters)
        used = budget.used
        await holder.finish()
        budget.wait = 30
        again = [Holder(budget, 5000, f"again{i}") for i in range(2)]  # the whole budget, two at once
        await settle()
        granted = sum(a.granted for a in again)
        for a in again:
            await a.finish()
        return refused, used, granted, budget.used

    assert run(scenario) == (25, LIMIT, 2, 0)


# ---- cancelled waiters ------------------------------------------------------------------------------
def test_a_cancelled_waiter_is_removed_and_does_not_leak_rows() -> None:
    async def scenario() -> dict[str, Any]:
        budget = RowBudget(LIMIT, small=100, wait=30)
        log: list[str] = []
        holder = Holder(budget, 7000, "holder", log)
        await settle()
        gone = Holder(budget, 9000, "gone", log)  # at the head of the queue, then its client goes away
        behind = Holder(budget, 2000, "behind", log)  # fits next to the holder once "gone" has left
        await settle()
        out: dict[str, Any] = {"before": (gone.granted, behind.granted, budget.used)}
        gone.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone.task
        await settle()
        out["after_cancel"] = (behind.granted, budget.used)
        await behind.finish()
        await holder.finish()
        whole = Holder(budget, LIMIT, "whole", log)
        await settle()
        out["whole"] = (whole.granted, budget.used)
        await whole.finish()
        out["end"], out["peak"], out["log"] = budget.used, budget.peak, log
        return out

    out = run(scenario)
    assert out["before"] == (False, False, 7000)
    assert out["after_cancel"] == (True, 9000)  # the cancelled head no longer blocks the queue
    assert out["whole"] == (True, LIMIT)
    assert out["end"] == 0 and out["peak"] == LIMIT and "gone" not in out["log"]


@pytest.mark.parametrize("order", ["cancel-then-grant", "grant-then-cancel"])
def test_a_waiter_cancelled_just_as_it_is_granted_does_not_leak_rows(order: str) -> None:
    """Granted and cancelled in the same loop turn: it gives the rows back (or, when the grant came first,
    it may run its block: Python 3.11's wait_for then keeps the result and drops the cancellation)."""

    async def scenario() -> dict[str, Any]:
        budget = RowBudget(LIMIT, small=100, wait=30)
        cm = budget.hold(LIMIT)
        await cm.__aenter__()
        waiter = Holder(budget, 6000, "waiter")
        waiter.leave.set()  # if it gets in, it leaves at once
        behind = Holder(budget, LIMIT, "behind")  # the whole budget: it gets in only if nothing leaked
        await settle()
        assert not waiter.granted and not behind.granted
        if order == "cancel-then-grant":
            waiter.task.cancel()  # its client goes away ...
            await cm.__aexit__(None, None, None)  # ... and in the same turn the rows free up and it is granted
        else:
            await cm.__aexit__(None, None, None)
            waiter.task.cancel()
        try:
            await waiter.task
            outcome = "ran"
        except asyncio.CancelledError:
            outcome = "cancelled"
        await settle()
        out = {"outcome": outcome, "behind": behind.granted, "used": budget.used}
        await behind.finish()
        out["end"] = budget.used
        return out

    out = run(scenario)
    assert out["outcome"] in (("cancelled",) if order == "cancel-then-grant" else ("ran", "cancelled"))
    assert out["behind"] is True and out["used"] == LIMIT and out["end"] == 0


def test_an_error_inside_the_block_gives_the_rows_back() -> None:
    async def scenario() -> tuple[int, int]:
        budget = RowBudget(LIMIT, small=100)
        with pytest.raises(ZeroDivisionError):
            async with budget.hold(LIMIT):
                _ = 1 / 0
        used = budget.used
        async with budget.hold(LIMIT):
            inside = budget.used
        return used, inside

    assert run(scenario) == (0, LIMIT)


# ---- unbounded --------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [0, -1])
def test_limit_zero_means_unbounded(limit: int) -> None:
    async def scenario() -> tuple[list[bool], int, int]:
        budget = RowBudget(limit, small=100, wait=0.01)
        holders = [Holder(budget, 732_000, f"h{i}") for i in range(8)]  # 8 fleet-sized requests at once
        await settle()
        granted = [h.granted for h in holders]
        for h in holders:
            await h.finish()
        return granted, budget.used, budget.peak

    granted, used, peak = run(scenario)
    assert granted == [True] * 8  # none waited, none was refused (wait is 0.01 s)
    assert used == 0 and peak == 0
