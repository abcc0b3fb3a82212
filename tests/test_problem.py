"""The gateway's own problem+json answers (gateway/http/problem.py)."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.http.problem import PrebuiltProblem, problem_bytes


def _parts(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def test_a_prebuilt_answer_is_the_answer_problem_bytes_makes() -> None:
    headers = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"))
    prebuilt = PrebuiltProblem(408, "request body not received in time", headers)
    made = problem_bytes(408, "request body not received in time", CIMultiDict(headers), "id-1")
    assert _parts(prebuilt.encode("id-1")) == _parts(made)
    assert prebuilt.body_size == len(_parts(made)[2])


def test_a_prebuilt_answer_differs_only_by_its_request_id_and_for_head_has_no_body() -> None:
    prebuilt = PrebuiltProblem(408, "request body not received in time", ())
    one, two = _parts(prebuilt.encode("a")), _parts(prebuilt.encode("b"))
    assert one[1].pop("X-Request-ID") == "a" and two[1].pop("X-Request-ID") == "b"
    assert one == two
    _status, fields, body = _parts(prebuilt.encode("a", head_only=True))
    assert body == b"" and fields["Content-Length"] == str(prebuilt.body_size)
