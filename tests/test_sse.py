"""engine/_sse.py: the WHATWG event-stream rules, any split of the input, OpenAI's streams.

The decoder is held to the standard's own examples ("Interpreting an event
stream" in the HTML standard), to a small reference reader written here
straight from the standard's steps (decode the whole stream, split lines,
apply fields), and to itself: any split of a stream into pieces, down to
single bytes and splits inside CRLF or a UTF-8 sequence, gives the same events
as the stream fed whole.
"""

from __future__ import annotations

import itertools
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._sse import ServerSentEvent, SSEDecoder


def decode_whole(stream: bytes) -> list[ServerSentEvent]:
    """The events of ``stream`` fed in one piece, then closed."""
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


def decode_pieces(pieces: list[bytes]) -> list[ServerSentEvent]:
    """The events of ``pieces`` fed one after another, then closed."""
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events + decoder.close()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (each taken modulo its length + 1)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def reference_events(stream: bytes) -> list[ServerSentEvent]:
    """The standard's steps, applied literally to the whole stream decoded as text."""
    text = stream.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    # Only lines followed by a line end count: what follows the last one is dropped.
    lines = re.split("\r\n|\r|\n", text)[:-1]
    events = []
    data_buffer, event_type, last_id, retry = "", "", None, None
    for line in lines:
        if line == "":
            if data_buffer == "":
                event_type, retry = "", None
                continue
            events.append(
                ServerSentEvent(
                    data_buffer.removesuffix("\n").encode(),
                    event_type or "message",
                    last_id,
                    retry,
                )
            )
            data_buffer, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_buffer += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry":
            if value and all(c in "0123456789" for c in value):
                retry = int(value)
    return events


# --- the standard's examples --------------------------------------------------------


def test_consecutive_data_lines_join_with_newlines():
    """The stock-ticker example: three data lines make one event, joined by LF."""
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode_whole(stream) == [ServerSentEvent(b"YHOO\n+2\n10")]


def test_comments_ids_and_the_leading_space_rule():
    """The second example: a comment block fires nothing, ids carry over, one space is stripped."""
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    assert decode_whole(stream) == [
        ServerSentEvent(b"first event", id="1"),
        ServerSentEvent(b"second event", id=""),
        ServerSentEvent(b" third event", id=""),
    ]


def test_last_event_needs_its_blank_line():
    """The end of the stream does not dispatch an event still missing its blank line."""
    assert decode_whole(b"data: first\n\ndata: third event\n") == [ServerSentEvent(b"first")]
    assert decode_whole(b"data: first\n\ndata: third event") == [ServerSentEvent(b"first")]


def test_empty_data_lines():
    """The third example: empty data, a lone newline, and a last block discarded."""
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert decode_whole(stream) == [ServerSentEvent(b""), ServerSentEvent(b"\n")]


def test_one_space_after_the_colon_is_optional():
    """The fourth example: ``data:test`` and ``data: test`` give the same event."""
    stream = b"data:test\n\ndata: test\n\n"
    assert decode_whole(stream) == [ServerSentEvent(b"test"), ServerSentEvent(b"test")]


def test_event_types_name_each_event():
    """The event-type example: ``event:`` names the next event only."""
    stream = (
        b"event: add\ndata: 73857293\n\n"
        b"event: remove\ndata: 2153\n\n"
        b"event: add\ndata: 113411\n\n"
        b"data: plain\n\n"
    )
    assert [(event.event, event.data) for event in decode_whole(stream)] == [
        ("add", b"73857293"),
        ("remove", b"2153"),
        ("add", b"113411"),
        ("message", b"plain"),
    ]


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n", b"\r"])
def test_crlf_lf_and_cr_line_ends_read_the_same(line_end):
    """Each of the three line ends the standard allows ends lines the same way."""
    lines = [b": hi", b"event: add", b"data: a", b"data: b", b"id: 7", b"retry: 3000", b""]
    stream = line_end.join(lines) + line_end
    assert decode_whole(stream) == [ServerSentEvent(b"a\nb", "add", "7", 3000)]


def test_mixed_line_ends_in_one_stream():
    """CR, LF and CRLF can alternate within a stream; CR then LF is one line end."""
    stream = b"data: a\rdata: b\r\n\ndata: c\n\r\r\n"
    assert decode_whole(stream) == [ServerSentEvent(b"a\nb"), ServerSentEvent(b"c")]


def test_crlf_split_between_pieces_is_one_line_end():
    """A CR ending one piece and an LF starting the next make one line end, not two."""
    assert decode_pieces([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [
        ServerSentEvent(b"a\nb")
    ]


def test_a_bom_at_the_start_is_skipped_even_split():
    """One byte-order mark at the start is skipped, also when it arrives byte by byte."""
    stream = b"\xef\xbb\xbfdata: x\n\n"
    assert decode_whole(stream) == [ServerSentEvent(b"x")]
    assert decode_pieces([stream[:1], stream[1:2], stream[2:4], stream[4:]]) == [
        ServerSentEvent(b"x")
    ]


def test_a_second_bom_is_part_of_the_field_name():
    """Only the first BOM is skipped: after it, ``\\ufeffdata`` is an unknown field."""
    assert decode_whole(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [
        ServerSentEvent(b"y")
    ]
    assert decode_pieces([b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\n"]) == [ServerSentEvent(b"a")]


def test_a_start_that_only_looks_like_a_bom_is_kept():
    """Bytes that begin like a BOM but are not one are data, even split after one byte."""
    assert decode_pieces([b"\xef", b"\xbcdata: x\n\n", b"data: \xef\xbc\x81\n\n"]) == [
        ServerSentEvent("\uff01".encode())
    ]


def test_an_event_without_data_is_not_dispatched_and_resets_its_type():
    """A block with no data line fires nothing, and its type does not reach the next event."""
    stream = b"event: ping\nretry: 10\n\ndata: x\n\n"
    assert decode_whole(stream) == [ServerSentEvent(b"x")]


def test_id_with_nul_is_ignored_and_ids_carry_over():
    """An ``id`` holding NUL leaves the last event ID as it was; later events keep it."""
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\n"
    assert [event.id for event in decode_whole(stream)] == ["1", "1", "1"]


def test_retry_is_kept_only_when_all_digits_and_only_for_its_event():
    """``retry`` takes ASCII digits only, and applies to the event it appears in."""
    stream = b"retry: 1x\ndata: a\n\nretry: 250\ndata: b\n\nretry:\ndata: c\n\n"
    assert [event.retry for event in decode_whole(stream)] == [None, 250, None]


def test_unknown_fields_and_comments_are_ignored():
    """Fields the standard does not name, and comment lines, change nothing."""
    stream = b":comment\nfoo: bar\ndata: x\n:another\nDATA: y\n\n"
    assert decode_whole(stream) == [ServerSentEvent(b"x")]


def test_invalid_utf8_is_replaced_as_the_standard_decodes_it():
    """Bytes that are not UTF-8 become U+FFFD in data and event types."""
    stream = b"event: a\xffb\ndata: \xe2\x82\ndata: ok\n\n"
    assert decode_whole(stream) == [
        ServerSentEvent("\ufffd\nok".encode(), "a\ufffdb"),
    ]


def test_close_drops_a_partial_event_and_the_decoder_reads_on():
    """``close`` returns nothing, drops the pending event, and keeps the last event ID."""
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 5\ndata: a\n\ndata: lost") == [ServerSentEvent(b"a", id="5")]
    assert decoder.close() == []
    assert decoder.feed(b"data: b\n\n") == [ServerSentEvent(b"b", id="5")]


def test_a_line_in_many_pieces_is_joined():
    """A long data line arriving in small pieces comes out whole."""
    line = b"x" * 10_000
    pieces = [b"data: "] + [line[i : i + 7] for i in range(0, len(line), 7)] + [b"\n\n"]
    assert decode_pieces(pieces) == [ServerSentEvent(line)]


# --- any split, and the reference reader ---------------------------------------------

LINE_ENDS = st.sampled_from([b"\n", b"\r", b"\r\n"])
VALUES = st.sampled_from(
    ["", " ", "x", " spaced ", "日本", "é", "😀", "a:b", "1234", "12a", "\0", "\ufeff"]
).map(str.encode) | st.sampled_from([b"\xff", b"a\xe2\x82", b"\xf0\x9f\x98"])
NAMES = st.sampled_from([b"data", b"event", b"id", b"retry", b"other", b"Data", b""])


@st.composite
def stream_lines(draw: st.DrawFn) -> bytes:
    """One line of an event stream (without its end): a field, a comment or a blank."""
    kind = draw(st.sampled_from(["field", "field", "bare", "comment", "blank", "blank"]))
    if kind == "blank":
        return b""
    if kind == "comment":
        return b":" + draw(VALUES)
    if kind == "bare":
        return draw(NAMES)
    separator = draw(st.sampled_from([b":", b": ", b":  "]))
    return draw(NAMES) + separator + draw(VALUES)


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    """A stream of generated lines with mixed line ends, maybe a BOM, maybe bad UTF-8."""
    parts = [b"\xef\xbb\xbf"] if draw(st.booleans()) else []
    for line in draw(st.lists(stream_lines(), max_size=20)):
        parts.append(line)
        parts.append(draw(LINE_ENDS))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"data: unterminated", b"\xff\xfe", b"\xe2\x82"])))
    return b"".join(parts)


@settings(max_examples=500, deadline=None)
@given(stream=event_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_gives_the_events_of_the_whole_stream(stream, cuts):
    """Fed whole, in random pieces or byte by byte, a stream gives the reference's events."""
    expected = reference_events(stream)
    assert decode_whole(stream) == expected
    assert decode_pieces(split_at(stream, cuts)) == expected
    assert decode_pieces([stream[i : i + 1] for i in range(len(stream))]) == expected


@settings(max_examples=200, deadline=None)
@given(stream=event_streams())
def test_every_two_piece_split_gives_the_same_events(stream):
    """Cutting a stream once, at any offset (inside CRLF, inside UTF-8), changes nothing."""
    expected = decode_whole(stream)
    for cut in range(len(stream) + 1):
        assert decode_pieces([stream[:cut], stream[cut:]]) == expected


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), keep=st.lists(st.booleans(), min_size=40, max_size=40))
def test_pieces_cut_at_line_ends_give_the_same_events(stream, keep):
    """Pieces that start at a line (what the fast path for whole events reads) change nothing."""
    ends = [match.end() for match in re.finditer(rb"\r\n|\r|\n", stream)]
    cuts = [end for index, end in enumerate(ends) if keep[index % len(keep)]]
    warm_up = b"data: first\n\n"
    expected = reference_events(warm_up + stream)
    assert decode_pieces([warm_up, *split_at(stream, cuts)]) == expected


@pytest.mark.parametrize(
    ("piece", "expected"),
    [
        (b"data: a\ndata: b\n\n", [ServerSentEvent(b"a\nb")]),
        (b"data: a\n\ndata: b\n", [ServerSentEvent(b"a")]),
        (b"data: a\n\nevent: e\ndata: b\n\n", [ServerSentEvent(b"a"), ServerSentEvent(b"b", "e")]),
        (b"data: a\n\ndata:b\n\n", [ServerSentEvent(b"a"), ServerSentEvent(b"b")]),
        (b"data: a\n\n: ping\n\n", [ServerSentEvent(b"a")]),
        (b"data: \xff\n\n", [ServerSentEvent("\ufffd".encode())]),
        (b"data: a", []),
        (b"", []),
    ],
)
def test_a_piece_after_a_whole_event_reads_as_any_other(piece, expected):
    """After an event ends a piece, the next piece's events are read by the same rules."""
    decoder = SSEDecoder()
    first = b"id: 9\ndata: first\n\n"
    assert decoder.feed(first) == [ServerSentEvent(b"first", id="9")]
    now = decoder.feed(piece)
    assert now == [event._replace(id="9") for event in expected]
    later = decoder.feed(b"\n\n")
    assert now + later == reference_events(first + piece + b"\n\n")[1:]


# --- OpenAI's streams ---------------------------------------------------------------


def chat_chunk(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
    """One ``chat.completion.chunk`` as OpenAI sends it with ``include_usage`` on."""
    delta: dict[str, object] = {}
    if role:
        delta = {"role": "assistant", "content": "", "refusal": None}
    elif content is not None:
        delta = {"content": content}
    return orjson.dumps(
        {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1741570283,
            "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }
    )


USAGE_CHUNK = orjson.dumps(
    {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
)
CHAT_TOKENS = ["Hello", "!", " Ça va", " 😀"]
CHAT_STREAM = (
    b"".join(
        b"data: " + chunk + b"\n\n"
        for chunk in [
            chat_chunk(None, role=True),
            *(chat_chunk(token) for token in CHAT_TOKENS),
            chat_chunk(None, finish="stop"),
            USAGE_CHUNK,
        ]
    )
    + b"data: [DONE]\n\n"
)


def test_openai_chat_stream_gives_each_chunk_then_done():
    """A chat completion stream: role chunk, content chunks, finish, usage, then [DONE]."""
    events = decode_whole(CHAT_STREAM)
    assert [event.event for event in events] == ["message"] * 8
    assert events[-1].data == b"[DONE]"
    chunks = [orjson.loads(event.data) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks[:-1])
    assert text == "".join(CHAT_TOKENS)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("piece_size", [1, 3, 64, 1460, 4096])
def test_openai_chat_stream_in_socket_sized_pieces(piece_size):
    """The chat stream cut into pieces of a fixed size gives the same events."""
    pieces = [CHAT_STREAM[i : i + piece_size] for i in range(0, len(CHAT_STREAM), piece_size)]
    assert decode_pieces(pieces) == decode_whole(CHAT_STREAM)


def responses_event(kind: str, sequence: int, **fields: object) -> bytes:
    """One Responses API event as OpenAI frames it: its type as ``event:`` and in the JSON."""
    payload = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


RESPONSE = {
    "id": "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654",
    "object": "response",
    "created_at": 1741290958,
    "status": "in_progress",
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "usage": None,
}
RESPONSES_DELTAS = ["Hi", " there", "!"]
RESPONSES_STREAM = b"".join(
    [
        responses_event("response.created", 0, response=RESPONSE),
        responses_event("response.in_progress", 1, response=RESPONSE),
        responses_event(
            "response.output_item.added",
            2,
            output_index=0,
            item={"id": "msg_1", "type": "message", "status": "in_progress", "content": []},
        ),
        responses_event(
            "response.content_part.added",
            3,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
        *(
            responses_event(
                "response.output_text.delta",
                4 + i,
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=delta,
            )
            for i, delta in enumerate(RESPONSES_DELTAS)
        ),
        responses_event(
            "response.output_text.done",
            7,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            text="Hi there!",
        ),
        responses_event(
            "response.completed",
            8,
            response={
                **RESPONSE,
                "status": "completed",
                "usage": {"input_tokens": 37, "output_tokens": 11, "total_tokens": 48},
            },
        ),
    ]
)


def test_openai_responses_stream_names_each_event():
    """A Responses API stream: event types in order, deltas, and the usage at the end."""
    events = decode_whole(RESPONSES_STREAM)
    kinds = [event.event for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert all(orjson.loads(event.data)["type"] == event.event for event in events)
    deltas = [
        orjson.loads(event.data)["delta"]
        for event in events
        if event.event == "response.output_text.delta"
    ]
    assert deltas == RESPONSES_DELTAS
    assert orjson.loads(events[-1].data)["response"]["usage"]["output_tokens"] == 11


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 100_000), max_size=20))
def test_openai_responses_stream_split_anywhere(cuts):
    """The Responses stream cut anywhere gives the same events as whole."""
    assert decode_pieces(split_at(RESPONSES_STREAM, cuts)) == decode_whole(RESPONSES_STREAM)
