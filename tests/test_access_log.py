"""The access log's writes: whole lines, and none larger than a pipe writes at once where the
lines fit, so that the lines of `--workers N`, sharing one stdout, never cut into each other.
(What the lines say, and that they reach stdout: tests/test_metrics.py.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.observability.access_log import PIPE_BUF, _whole_lines, encode_line

LINES = st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=6000)
                 .map(lambda text: text + "\n"), max_size=40)


@given(LINES)
def test_writes_hold_whole_lines_within_a_pipe_write(lines: list[str]) -> None:
    chunks = list(_whole_lines(lines))
    assert b"".join(chunks) == b"".join(encode_line(line) for line in lines)
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        # over PIPE_BUF only as a single line that is itself longer
        assert len(chunk) <= PIPE_BUF or chunk.count(b"\n") == 1


def test_a_line_with_a_lone_surrogate_is_written_escaped() -> None:
    # found by the test above: a lone surrogate other than surrogateescape's raised
    # UnicodeEncodeError, and the flush would have lost the whole batch with it
    assert list(_whole_lines(["a\ud800b\n", "raw \udcff\n"])) == [b"a\\ud800b\nraw \xff\n"]


def test_small_lines_are_written_together() -> None:
    lines = ["x" * 99 + "\n"] * 100  # 10,000 bytes: three writes of whole lines
    assert [len(chunk) for chunk in _whole_lines(lines)] == [4000, 4000, 2000]
