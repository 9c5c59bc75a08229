"""How the upstream's bytes are split into reads must not change the events the decoder finds.

A read that is one whole ``data:`` event is taken without splitting it into lines (the usual
case, once per token); these check that shortcut against the general reading of the same bytes.
"""

from __future__ import annotations

import json

import pytest

from registry.completions.sse import ChunkReader, MalformedStreamError, SSEDecoder

STREAMS = {
    "one line per event": b'data: {"a":1}\n\ndata: {"b":"x y"}\n\ndata: [DONE]\n\n',
    "crlf": b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n',
    "crlf then lf": b'data: {"a":1}\r\n\ndata: {"b":2}\n\n',
    "a bare cr inside": b"data: a\rb\n\ndata: c\n\n",
    "empty data": b"data: \n\ndata: x\n\n",
    "named, two data lines and a comment": b": keep-alive\n\nevent: e\ndata: one\ndata: two\n\ndata: z\n\n",
    "no space after the colon": b"data:{}\n\ndata: {}\n\n",
    "extra blank lines between events": b"data: x\n\n\n\ndata: y\n\n\n\n",
}


def general(stream: bytes) -> list[bytes]:
    """The events' data read the long way: every block split into its lines."""
    decoder = SSEDecoder()
    return [event.data for event in decoder.feed(stream)]


def fed(reads: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    return [data for read in reads for data in decoder.feed_data(read)]


def events_of(stream: bytes) -> list[bytes]:
    """The stream cut after every blank line: one event per read, as a backend writes them."""
    normal = stream.replace(b"\r\n", b"\n")
    if normal != stream:  # keep the original bytes: cut the CRLF stream where its events end
        return [stream]
    return [block + b"\n\n" for block in stream.split(b"\n\n")[:-1]]


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_every_split_into_reads_finds_the_same_events(stream: bytes) -> None:
    expected = general(stream)

    assert fed([stream]) == expected
    assert fed(events_of(stream)) == expected
    for cut in range(1, len(stream)):
        assert fed([stream[:cut], stream[cut:]]) == expected, cut
    assert fed([bytes([byte]) for byte in stream]) == expected


def test_a_whole_event_in_one_read_is_its_data() -> None:
    decoder = SSEDecoder()

    assert decoder.feed_data(b'data: {"choices":[]}\n\n') == [b'{"choices":[]}']
    assert decoder.feed_data(b"data: x\r\n\n") == [b"x"]  # a CRLF before the blank line is a line end too
    assert decoder.feed_data(b"data: [DONE]\n\n") == [b"[DONE]"]


def test_a_read_that_ends_mid_event_is_held_for_the_next() -> None:
    decoder = SSEDecoder()

    assert decoder.feed_data(b"data: x\n") == []
    assert decoder.feed_data(b"\ndata: y\n\n") == [b"x", b"y"]


def test_a_line_that_is_not_sse_is_refused_whatever_the_reads() -> None:
    with pytest.raises(MalformedStreamError):
        SSEDecoder().feed_data(b"nonsense: 1\n\n")
    decoder = SSEDecoder()
    decoder.feed_data(b"data: x\n")
    with pytest.raises(MalformedStreamError):
        decoder.feed_data(b"bad\n\n")


def chunk(text: str | None, *, finish: str | None = None, usage: tuple[int, int] | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    body: dict[str, object] = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


ANSWER = [
    chunk("", usage=(7, 0)),  # the role chunk: no text
    chunk("Hel", usage=(7, 1)),
    chunk('lo "wörld"', usage=(7, 2)),  # sent as JSON escapes
    chunk(None, finish="length", usage=(7, 2)),
    b"data: [DONE]\n\n",
]


def read_all(reads: list[bytes]) -> tuple[list[str], ChunkReader]:
    reader = ChunkReader()
    texts = [reader.read(data) for data in reads]
    return [text for text in texts if text], reader


@pytest.mark.parametrize("cut", range(1, len(b"".join(ANSWER))))
def test_a_stream_read_any_way_gives_the_same_text_and_facts(cut: int) -> None:
    stream = b"".join(ANSWER)

    texts, reader = read_all([stream[:cut], stream[cut:]])

    assert "".join(texts) == 'Hello "wörld"'
    assert (reader.finish_reason, reader.input_tokens, reader.output_tokens, reader.done) == ("length", 7, 2, True)


def test_each_event_read_alone_is_its_own_text_and_the_tokens_count_as_they_come() -> None:
    reader = ChunkReader()

    assert read_all([b"".join(ANSWER)])[0] == ['Hello "wörld"']  # the events of one read leave as one text
    assert [reader.read(data) for data in ANSWER[:3]] == ["", "Hel", 'lo "wörld"']
    assert (reader.input_tokens, reader.output_tokens, reader.done) == (7, 2, False)
    reader.read(b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\n')  # no usage: counted by its delta
    assert reader.output_tokens == 3


def test_text_that_came_before_a_bad_event_in_the_same_read_is_returned_and_the_error_kept() -> None:
    reader = ChunkReader()

    assert reader.read(ANSWER[1] + b"data: {not json\n\n") == "Hel"
    assert isinstance(reader.failure, MalformedStreamError)
    with pytest.raises(MalformedStreamError):
        ChunkReader().read(b"data: {not json\n\n" + ANSWER[1])  # nothing before it: refused at once


def test_a_stream_that_ends_without_done_is_refused_after_its_last_text() -> None:
    reader = ChunkReader()
    reader.read(ANSWER[1])

    assert reader.read(ANSWER[2][:-2]) == ""  # the last event, its blank line never sent
    assert reader.end() == 'lo "wörld"'
    assert isinstance(reader.failure, MalformedStreamError)
    with pytest.raises(MalformedStreamError, match="without \\[DONE\\]"):
        ChunkReader().end()


def test_a_read_that_is_only_a_blank_line_is_no_event() -> None:
    """A backend (or a proxy before it) that ends an event with extra blank lines, read so that one arrives alone."""
    reader = ChunkReader()

    texts = [reader.read(ANSWER[1]), reader.read(b"\n\n"), reader.read(ANSWER[2]), reader.read(ANSWER[-1])]

    assert texts == ["Hel", "", 'lo "wörld"', ""]
    assert reader.done
