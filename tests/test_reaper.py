"""The reaper (gateway/http/reaper.py): expirations handled a bounded slice per loop turn,
with the loop's other callbacks (and its polls) between the slices."""

from __future__ import annotations

import asyncio

from gateway.http.reaper import Reaper
from tests.support.turns import runs_of


def test_expirations_run_in_slices_with_other_work_between() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        ticks = iter(range(1_000_000))  # each callback "takes" one tick
        reaper = Reaper(loop, budget=3, clock=lambda: next(ticks))
        order: list[str] = []
        for i in range(7):
            reaper.add(lambda i=i: order.append(f"cut{i}"))
        assert order == []  # nothing runs in the turn that queued it

        def other(turn: int) -> None:  # another connection's work, one turn after another
            order.append(f"other{turn}")
            if turn < 4:
                loop.call_soon(other, turn + 1)

        loop.call_soon(other, 0)
        for _ in range(10):
            await asyncio.sleep(0)
        return order

    order = asyncio.run(run())
    cuts = [o for o in order if o.startswith("cut")]
    assert cuts == [f"cut{i}" for i in range(7)]  # all of them, in order
    # at most 3 between two turns of the other work: it was never held up by all 7
    runs = runs_of(order, "cut")
    assert max(runs) <= 3 and sum(runs) == 7


def test_at_least_one_a_turn_and_an_idle_reaper_schedules_nothing() -> None:
    async def run() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        reaper = Reaper(loop, budget=0.0)  # over budget after each one: still one a turn
        done: list[int] = []
        for i in range(3):
            reaper.add(lambda i=i: done.append(i))
        for _ in range(5):
            await asyncio.sleep(0)
        return done, len(reaper)

    done, left = asyncio.run(run())
    assert done == [0, 1, 2] and left == 0


def test_a_failing_callback_does_not_stop_the_rest() -> None:
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: None)
        reaper = Reaper(loop)
        done: list[int] = []
        reaper.add(lambda: 1 / 0)  # type: ignore[func-returns-value]
        reaper.add(lambda: done.append(1))
        for _ in range(5):
            await asyncio.sleep(0)
        return done

    assert asyncio.run(run()) == [1]
