"""New connections' first bytes handled a bounded number per loop turn (gateway/http/arrivals.py),
and how the connection layer uses it: a crowd of new connections is handled a few per turn, in
arrival order, with their reading paused meanwhile; a connection already talking is not held
up by them; one whose client left while it waited is never handled; a server stopping still
answers the requests that wait."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from gateway.http.arrivals import Arrivals
from gateway.http.protocol import Connection, Exchange, GatewayServer
from gateway.http.response import Answer
from tests.support.memory_transport import MemoryTransport
from tests.support.turns import runs_of


def test_a_crowd_is_let_in_a_few_per_turn_in_order_with_other_work_between() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        arrivals = Arrivals(loop, per_turn=3)
        order: list[str] = []

        def other(turn: int) -> None:  # an established connection's work, turn after turn
            order.append(f"other{turn}")
            if turn < 5:
                loop.call_soon(other, turn + 1)

        loop.call_soon(other, 0)
        await asyncio.sleep(0)  # (it runs in every turn from now on)
        for i in range(8):
            if arrivals.take():
                order.append(f"new{i}")
            else:
                arrivals.wait(lambda i=i: order.append(f"new{i}"))
        assert order == ["other0", "new0", "new1", "new2"]  # room in this turn: at once
        for _ in range(10):
            await asyncio.sleep(0)
        return order

    order = asyncio.run(run())
    assert [o for o in order if o.startswith("new")] == [f"new{i}" for i in range(8)]
    runs = runs_of(order, "new")  # let in between two turns of the other work
    assert max(runs) <= 3 and sum(runs) == 8, order  # unbounded: all 8 in one run


def test_room_comes_back_each_turn_nobody_jumps_the_queue_and_idle_schedules_nothing() -> None:
    async def run() -> tuple[list[bool], list[bool], bool]:
        loop = asyncio.get_running_loop()
        arrivals = Arrivals(loop, per_turn=1)
        first = [arrivals.take(), arrivals.take()]  # one a turn
        arrivals.wait(lambda: None)
        await asyncio.sleep(0)
        later = [arrivals.take()]  # the one waiting had this turn's room
        for _ in range(3):
            await asyncio.sleep(0)
        later.append(arrivals.take())  # a later turn: room again
        for _ in range(3):
            await asyncio.sleep(0)
        return first, later, arrivals._scheduled

    first, later, scheduled = asyncio.run(run())
    assert first == [True, False]
    assert later == [False, True]
    assert not scheduled


def _server(per_turn: int, handled: list[str]) -> GatewayServer:
    async def handler(ex: Exchange) -> None:
        handled.append(ex.target)
        ex.send(Answer(200, body=b""))

    server = GatewayServer(handler, header_timeout=5.0, error_headers=CIMultiDict,
                           count_error=lambda status: None, pace_arrivals=True)
    server.arrivals = Arrivals(server.loop, per_turn=per_turn)
    return server


def _open(server: GatewayServer) -> tuple[Connection, MemoryTransport]:
    conn, transport = server(), MemoryTransport()
    conn.connection_made(transport)
    return conn, transport


def _status_lines(transport: MemoryTransport) -> list[bytes]:
    return [line for line in transport.written.split(b"\r\n") if line.startswith(b"HTTP/")]


def _one_waiting(handled: list[str]) -> list[tuple[Connection, MemoryTransport]]:
    """Two new connections sending a request in one turn of a server with room for one: the
    second waits for the next turn."""
    server = _server(1, handled)
    pairs = [_open(server) for _ in range(2)]
    for conn, _t in pairs:
        conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert pairs[1][0]._early is not None
    return pairs


async def _turns(count: int = 6) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_new_connections_wait_their_turn_paused_and_a_talking_one_does_not() -> None:
    async def run() -> tuple[list[str], list[bool], list[str], list[list[bytes]]]:
        handled: list[str] = []
        server = _server(1, handled)
        talking, talking_t = _open(server)
        talking.data_received(b"GET /old HTTP/1.1\r\nHost: a\r\n\r\n")
        await _turns(4)
        assert handled == ["/old"]
        crowd = [_open(server) for _ in range(3)]
        for i, (conn, _t) in enumerate(crowd, 1):  # three heads of new connections at once
            conn.data_received(f"GET /new{i} HTTP/1.1\r\nHost: a\r\n".encode())
        paused = [t.paused for _c, t in crowd]
        for conn, _t in crowd:  # the rest of each head, read late
            conn.data_received(b"\r\n")
        talking.data_received(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        await _turns(2)
        early = list(handled)
        await _turns(10)
        everyone = [*crowd, (talking, talking_t)]
        return early, paused, handled, [_status_lines(t) for _c, t in everyone]

    early, paused, handled, answers = asyncio.run(run())
    assert paused == [False, True, True]  # one a turn: the other two wait, not reading
    assert early[:3] == ["/old", "/new1", "/again"], early  # not behind the crowd's queue
    assert handled == ["/old", "/new1", "/again", "/new2", "/new3"]
    assert answers == [[b"HTTP/1.1 200 OK"]] * 3 + [[b"HTTP/1.1 200 OK"] * 2]


def test_a_client_gone_while_it_waited_is_never_handled() -> None:
    async def run() -> list[str]:
        handled: list[str] = []
        pairs = _one_waiting(handled)
        pairs[1][0].connection_lost(ConnectionResetError())
        await _turns()
        return handled

    assert asyncio.run(run()) == ["/x"]


def test_a_stopping_server_still_answers_a_request_that_waited_for_its_turn() -> None:
    async def run() -> tuple[list[str], list[bytes], bool]:
        handled: list[str] = []
        pairs = _one_waiting(handled)
        for conn, _t in pairs:
            conn.shutdown()  # (what GatewayServer.shutdown does to each)
        await _turns()
        transport = pairs[1][1]
        return handled, _status_lines(transport), transport.closed

    handled, answer, closed = asyncio.run(run())
    assert handled == ["/x", "/x"]
    assert answer == [b"HTTP/1.1 200 OK"] and closed


def test_a_head_deadline_passing_while_the_bytes_wait_does_not_cut_the_connection() -> None:
    async def run() -> tuple[list[str], list[bytes], bool]:
        handled: list[str] = []
        waiting, transport = _one_waiting(handled)[1]
        waiting._head_timed_out()  # its deadline passes before its turn (a busy gateway)
        await _turns()
        return handled, _status_lines(transport), transport.closed

    handled, answer, closed = asyncio.run(run())
    assert handled == ["/x", "/x"]
    assert answer == [b"HTTP/1.1 200 OK"] and not closed
