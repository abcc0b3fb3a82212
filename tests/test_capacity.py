"""Capacity bounds: waiting for a pooled connection is bounded, budgets and client shares hold."""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.capacity import Full, Slots
from gateway.ratelimit.keys import client_network


def test_take_now_refuses_beyond_the_limit_and_the_client_share() -> None:
    slots = Slots("WebSockets", limit=3, per_client=2)
    slots.take_now("a")
    slots.take_now("a")
    with pytest.raises(Full, match="per client"):
        slots.take_now("a")
    slots.take_now("b")
    with pytest.raises(Full, match="limit 3"):
        slots.take_now("c")
    slots.give_back_for("a")
    slots.take_now("c")
    assert slots.in_use == 3


def test_a_waiter_gets_a_slot_given_back_and_the_rest_time_out() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = Slots("upstream connections", limit=1)
        await slots.take(0.1)
        outcomes: list[str] = []

        async def wait(name: str, timeout: float) -> None:
            try:
                await slots.take(timeout)
                outcomes.append(name)
            except Full:
                outcomes.append(f"{name} refused")

        first = asyncio.create_task(wait("first", 1.0))
        late = asyncio.create_task(wait("late", 0.05))
        await asyncio.sleep(0.1)  # `late` times out while the slot is held
        slots.give_back()  # passes the slot to `first`, in arrival order
        await asyncio.gather(first, late)
        slots.give_back()
        return outcomes, slots.in_use

    outcomes, in_use = asyncio.run(scenario())
    assert outcomes == ["late refused", "first"]
    assert in_use == 0


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def scenario() -> int:
        slots = Slots("upstream connections", limit=1)
        await slots.take(0.1)
        waiter = asyncio.create_task(slots.take(5))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        slots.give_back()
        await slots.take(0.01)  # free again at once
        slots.give_back()
        return slots.in_use

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("address,prefix,key", [
    ("2001:db8:1:2::a", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:3::a", 64, "2001:db8:1:3::/64"),
    ("2001:db8:1:2::a", 48, "2001:db8:1::/48"),
    ("2001:db8:1:2::a", 128, "2001:db8:1:2::a"),
    ("198.51.100.7", 64, "198.51.100.7"),
])
def test_ipv6_clients_are_counted_by_their_network(address: str, prefix: int, key: str) -> None:
    assert client_network(address, prefix) == key
