"""engine/_wire.py against h11: the same responses read the same way, requests h11 can parse.

The reader is differential-tested: generated responses (status lines, reason
phrases, header casing, duplicates, obs-fold, bare LF line ends, control
characters, Content-Length and chunked bodies with extensions and trailers,
close-delimited bodies, 1xx heads, bytes past the response, a peer closing
early) are fed, whole, one byte at a time and in arbitrary pieces, both to
:class:`engine._wire.ResponseReader` and to h11, and must give the same
status, reason, headers, body and connection reuse at the same piece, or be
refused by both.  The same pieces are also read as a stream
(:meth:`engine._wire.ResponseReader.feed_head`, then its
:class:`engine._wire.BodyReader`), which must give the same answer and, piece
by piece, the same body bytes as h11's ``Data`` events.

The reader's own parser hands some responses to h11 on purpose.  That is
allowed only under these rules, each a ``FALLBACK_*`` constant of
``engine._wire`` and each checked here against what the generated response
really contains (``Response.features``):

* FALLBACK_NOT_HTTP_11: the status line does not start ``HTTP/1.1 ``.
* FALLBACK_BARE_LF: a line of the head ends in LF without CR.
* FALLBACK_IRREGULAR_HEAD: the status or a header line is outside the plain
  grammar (obs-fold, a control character other than tab, a name that is not a
  token, whitespace before the colon, no colon, a malformed status line).
* FALLBACK_STATUS: a 1xx head (or a final status below 200), or a CONNECT request.
* FALLBACK_CONTENT_LENGTH: Content-Length repeated, a comma list, not digits,
  or over 20 digits.
* FALLBACK_TRANSFER_ENCODING: Transfer-Encoding not exactly one ``chunked``,
  or with a Content-Length.
* FALLBACK_NO_FRAMING: neither header, on an answer that has a body.

A response with none of these features must be read by the reader's own
parser (``fallback_reason is None``), never handed to h11.

Requests are checked the other way round: what ``engine._wire`` writes, h11
acting as a server must parse back to the same method, target, headers and
body.  One documented difference: the serializer refuses only what could start
a new line (CR, LF, NUL) or a name that is not a token, where h11 as a client
also refuses values with surrounding whitespace or other control characters
(``test_serializer_refuses_only_what_could_start_a_new_line``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs
import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _wire
from engine._http import _serialize_request

# --- generated responses ------------------------------------------------------------

CRLF = b"\r\n"
# Bytes a plain reason phrase or header value is made of: printable ASCII, tab
# and obs-text (what both parsers accept).
PLAIN_TEXT = st.binary(max_size=24).map(
    lambda raw: bytes(b for b in raw if b == 0x09 or 0x20 <= b <= 0x7E or b >= 0x80)
)
# Control characters other than tab: h11 accepts some in values (\x01, \x7f),
# refuses others (NUL, VT, FF); the plain parser takes none.
CONTROL_CHARACTERS = st.sampled_from(
    [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1f", b"\x7f"]
)
TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
).map(str.encode)
COMMON_NAMES = [
    b"content-type",
    b"x-request-id",
    b"x-ratelimit-remaining-requests",
    b"retry-after",
    b"date",
    b"set-cookie",
    b"server",
    b"content-encoding",
]
CONNECTION_VALUES = [
    b"close",
    b"Close",
    b"keep-alive",
    b"keep-alive, close",
    b"upgrade,CLOSE",
    b"closed",
    b"",
]


@st.composite
def random_casing(draw: st.DrawFn, name: bytes) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(
        (c ^ 0x20) if flip and chr(c).isalpha() else c for c, flip in zip(name, flips, strict=True)
    )


@attrs.define
class Response:
    """A generated response: its bytes, the request it answers, and its features."""

    data: bytes
    method: bytes
    close_requested: bool
    peer_closes: bool
    # The FALLBACK_* reasons the reader may give for it (see the module docstring).
    features: set[str]


# Where a single-fault response may be odd (the first argument of Builder.pick).
FAULT_SITES = [
    "method",
    "informational",
    "status",
    "version",
    "reason",
    "status line",
    "header",
    "no colon",
    "line end",
    "framing",
    "content-length",
    "transfer-encoding",
    "chunk size",
    "chunk footer",
    "trailer",
]


class Builder:
    """Assembles a response's bytes while noting which fallback rules it touches.

    Each choice of the response goes through :meth:`pick`.  In a ``regular``
    response every choice is one both parsers accept on the plain path
    (casing, whitespace, duplicates, extensions, trailers, leading zeros,
    bytes past the end); in a ``single`` fault response one choice (drawn at
    random among its sites) is odd; in a ``chaos`` response each choice is odd one time in eight.
    """

    def __init__(self, draw: st.DrawFn, mode: str, fault_site: str | None = None) -> None:
        self.draw = draw
        self.mode = mode
        self.parts: list[bytes] = []
        self.features: set[str] = set()
        # A single-fault response's odd choice: at one of the occurrences of this site.
        self.fault_site = fault_site or draw(st.sampled_from(FAULT_SITES))
        self.fault_made = False

    def pick(self, site: str, regular: Sequence, odd: Sequence = ()) -> Any:
        """One of ``regular``, or of ``odd`` where the response's mode says so."""
        make_odd = False
        if odd and self.mode == "single":
            make_odd = site == self.fault_site and not self.fault_made and self.draw(st.booleans())
            self.fault_made = self.fault_made or make_odd
        elif odd and self.mode == "chaos":
            make_odd = self.draw(st.integers(0, 7)) == 0
        return self.draw(st.sampled_from(odd if make_odd else regular))

    def line(self, text: bytes) -> None:
        """A line of the head, ending in CRLF or (rarely, if irregular) a bare LF."""
        end = self.pick("line end", [CRLF], [b"\n"])
        if end == b"\n":
            self.features.add(_wire.FALLBACK_BARE_LF)
        self.parts.append(text + end)

    def odd(self, feature: str) -> None:
        self.features.add(feature)


@st.composite
def status_line(draw: st.DrawFn, builder: Builder, status: int) -> None:
    version = builder.pick("version", [b"1.1"], [b"1.0", b"2.0"])
    if version != b"1.1":
        builder.odd(_wire.FALLBACK_NOT_HTTP_11)
    reason_kind = builder.pick("reason", ["text", "text", "none", "empty"], ["control"])
    reason = {
        "text": b" " + draw(PLAIN_TEXT),
        "none": b"",
        "empty": b" ",
        "control": b" OK" + draw(CONTROL_CHARACTERS),
    }[reason_kind]
    if reason_kind == "control":
        builder.odd(_wire.FALLBACK_IRREGULAR_HEAD)
    line = b"HTTP/%s %03d%s" % (version, status, reason)
    mangle = builder.pick("status line", [None], ["lower", "double space", "4 digits", "leading"])
    if mangle == "lower":
        line = line.lower()
        builder.odd(_wire.FALLBACK_NOT_HTTP_11)
    elif mangle == "double space":
        line = line.replace(b" ", b"  ", 1)
        builder.odd(_wire.FALLBACK_IRREGULAR_HEAD)
    elif mangle == "4 digits":
        line = line.replace(b" %03d" % status, b" %03d0" % status, 1)
        builder.odd(_wire.FALLBACK_IRREGULAR_HEAD)
    elif mangle == "leading":
        line = draw(st.sampled_from([b" ", b"\r\n", b"\n", b"x"])) + line
        builder.odd(_wire.FALLBACK_NOT_HTTP_11)
    builder.line(line)


@st.composite
def header_lines(draw: st.DrawFn, builder: Builder) -> None:
    """Zero or more ordinary header lines (no framing headers), some repeated."""
    names = draw(st.lists(st.one_of(st.sampled_from(COMMON_NAMES), TOKEN), max_size=4))
    if names and draw(st.booleans()):
        names.append(names[0])  # a duplicate
    for name in names:
        name = draw(random_casing(name))
        if name.lower() in (b"content-length", b"transfer-encoding", b"connection"):
            name = b"x-" + name
        value = draw(PLAIN_TEXT)
        before = draw(st.sampled_from([b"", b" ", b"  ", b"\t"]))
        after = draw(st.sampled_from([b"", b"", b" ", b"\t "]))
        kind = builder.pick("header", ["plain"], ["control", "bad name", "space", "fold"])
        if kind == "control":
            value += draw(CONTROL_CHARACTERS) + b"x"
        elif kind == "bad name":
            name = draw(st.sampled_from([b"", b"x y", b"(x)", b"x\x01", b"\xe9t\xe9"]))
        elif kind == "space":
            name += draw(st.sampled_from([b" ", b"\t"]))
        if kind != "plain":
            builder.odd(_wire.FALLBACK_IRREGULAR_HEAD)
        builder.line(name + b":" + before + value + after)
        if kind == "fold":
            builder.line(draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(PLAIN_TEXT))
    if builder.pick("no colon", [False], [True]):
        builder.line(b"no colon here")
        builder.odd(_wire.FALLBACK_IRREGULAR_HEAD)
    for value in draw(st.lists(st.sampled_from(CONNECTION_VALUES), max_size=2)):
        builder.line(draw(random_casing(b"connection")) + b": " + value)


@st.composite
def content_length_lines(draw: st.DrawFn, builder: Builder, length: int) -> None:
    name = draw(random_casing(b"content-length"))
    kind = builder.pick(
        "content-length",
        ["plain", "plain", "zeros", "spaces"],
        ["repeated", "list", "not digits", "21 digits"],
    )
    value = b"%d" % length
    if kind == "zeros":
        value = value.rjust(draw(st.integers(len(value), 20)), b"0")
    elif kind == "spaces":
        value = b" " + value + b"\t"
    elif kind == "repeated":
        builder.line(name + b": " + value)
        value = draw(st.sampled_from([value, b"%d" % (length + 1)]))
    elif kind == "list":
        value = value + b", " + draw(st.sampled_from([value, b"%d" % (length + 1)]))
    elif kind == "not digits":
        value = draw(st.sampled_from([b"", b"two", b"+%d" % length, b"-1", b"0x10", b"1 2"]))
    elif kind == "21 digits":
        value = value.rjust(21, b"0")
    if kind not in ("plain", "zeros", "spaces"):
        builder.odd(_wire.FALLBACK_CONTENT_LENGTH)
    builder.line(name + b":" + value)


@st.composite
def transfer_encoding_lines(draw: st.DrawFn, builder: Builder) -> None:
    name = draw(random_casing(b"transfer-encoding"))
    kind = builder.pick("transfer-encoding", ["plain"], ["other coding", "list", "repeated"])
    value = draw(random_casing(b"chunked"))
    if kind == "other coding":
        value = draw(st.sampled_from([b"gzip", b"identity", b"chunked2"]))
    elif kind == "list":
        value = b"gzip, " + value
    elif kind == "repeated":
        builder.line(name + b": chunked")
    if kind != "plain":
        builder.odd(_wire.FALLBACK_TRANSFER_ENCODING)
    builder.line(name + b": " + value)


@st.composite
def chunked_body(draw: st.DrawFn, builder: Builder, body: bytes) -> bytes:
    """``body`` in chunked coding: extensions, odd size lines, trailers, faults if irregular."""
    out = []
    rest = body
    while rest:
        size = draw(st.integers(1, len(rest)))
        piece, rest = rest[:size], rest[size:]
        footer = builder.pick("chunk footer", [CRLF], [b"\n", b"XX", b"\r", b""])
        out.append(draw(chunk_size_line(builder, len(piece))) + piece + footer)
    out.append(draw(chunk_size_line(builder, 0)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(TOKEN)
        value = draw(PLAIN_TEXT)
        kind = builder.pick("trailer", ["plain", "plain", "fold", "bare lf"], ["bad", "control"])
        if kind == "fold":
            out.append(name + b": " + value + b"\r\n " + draw(PLAIN_TEXT) + CRLF)
        elif kind == "bad":
            out.append(draw(st.sampled_from([b" starts folded", b"no colon", b"x y: z"])) + CRLF)
        elif kind == "control":
            out.append(name + b": a" + draw(CONTROL_CHARACTERS) + b"b" + CRLF)
        elif kind == "bare lf":
            out.append(name + b": " + value + b"\n")
        else:
            out.append(name + b": " + value + CRLF)
    out.append(draw(st.sampled_from([CRLF, CRLF, b"\n"])))
    return b"".join(out)


@st.composite
def chunk_size_line(draw: st.DrawFn, builder: Builder, size: int) -> bytes:
    digits = draw(st.sampled_from([b"%x", b"%X"])) % size
    kind = builder.pick(
        "chunk size",
        ["plain", "plain", "zeros", "ext", "ows"],
        ["21 digits", "space before ext", "bad", "lf"],
    )
    if kind == "zeros":
        digits = digits.rjust(draw(st.integers(len(digits), 20)), b"0")
    elif kind == "21 digits":
        digits = digits.rjust(21, b"0")
    elif kind == "ext":
        extension = draw(st.binary(max_size=10).map(lambda raw: raw.replace(b"\n", b"")))
        digits += b";" + extension.replace(b"\r", b"")
    elif kind == "ows":
        digits += draw(st.sampled_from([b" ", b"\t", b" \t "]))
    elif kind == "space before ext":
        digits += b" ;x=1"
    elif kind == "bad":
        digits = draw(st.sampled_from([b"", b"zz", b"-1", b"0x5"]))
    elif kind == "lf":
        return digits + b"\n"
    return digits + CRLF


@st.composite
def responses(draw: st.DrawFn, fault_site: str | None = None) -> Response:
    """A response to one request: regular, with a single fault, or irregular in many ways.

    With ``fault_site``, mostly single-fault responses whose fault is at that site.
    """
    if fault_site is None:
        builder = Builder(draw, draw(st.sampled_from(["regular", "single", "chaos"])))
    else:
        builder = Builder(draw, draw(st.sampled_from(["single"] * 3 + ["regular"])), fault_site)
    method = builder.pick("method", [b"POST", b"POST", b"GET", b"HEAD"], [b"CONNECT"])
    if method == b"CONNECT":
        builder.odd(_wire.FALLBACK_STATUS)
    close_requested = draw(st.booleans())
    if builder.pick("informational", [False], [True]):
        builder.parts.append(b"HTTP/1.1 %d Continue\r\n\r\n" % draw(st.sampled_from([100, 103])))
        builder.odd(_wire.FALLBACK_STATUS)
    status = draw(
        st.one_of(
            st.sampled_from([200, 200, 201, 204, 304, 400, 404, 429, 500, 503]),
            st.integers(200, 999),
        )
    )
    status = builder.pick("status", [status], [99, 0])
    if status < 200:
        builder.odd(_wire.FALLBACK_STATUS)
    draw(status_line(builder, status))
    draw(header_lines(builder))
    body = draw(st.binary(max_size=80))
    framing = builder.pick("framing", ["length", "chunked"], ["both", "none"])
    if draw(st.integers(0, 5)) == 0:
        builder.line(draw(random_casing(b"content-encoding")) + b": gzip")
    if framing in ("length", "both"):
        # Mostly the true length; sometimes short (bytes left over) or long (truncated).
        declared = len(body) + draw(st.sampled_from([0] * 8 + [-1, 1, 5]))
        draw(content_length_lines(builder, max(declared, 0)))
    if framing in ("chunked", "both"):
        draw(transfer_encoding_lines(builder))
    if framing == "both":
        builder.odd(_wire.FALLBACK_TRANSFER_ENCODING)
    if framing == "none" and not (method == b"HEAD" or status in (204, 304)):
        builder.odd(_wire.FALLBACK_NO_FRAMING)
    builder.line(b"")
    builder.parts.append(draw(chunked_body(builder, body)) if framing == "chunked" else body)
    builder.parts.append(draw(st.sampled_from([b""] * 6 + [b"HTTP/1.1 200 OK\r\n", b"\r\n"])))
    return Response(
        b"".join(builder.parts), method, close_requested, draw(st.booleans()), builder.features
    )


# --- reading a response both ways ------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What a reader made of a response: refused, incomplete, or the response and where."""

    kind: str  # "response", "refused" or "incomplete"
    # Index of the piece that completed it (len(pieces): the peer's close did).
    completed_at: int = -1
    status_code: int = 0
    reason: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    keep_alive: bool = False
    content_encoded: bool = False


def read_with_reader(
    pieces: list[bytes], response: Response
) -> tuple[Outcome, _wire.ResponseReader]:
    """Feed ``pieces`` (then the close, if the peer closes) to a ResponseReader."""
    reader = _wire.ResponseReader(response.method, response.close_requested)
    feeds = [*pieces, b""] if response.peer_closes else pieces
    for index, piece in enumerate(feeds):
        try:
            message = reader.feed(piece)
        except _wire.RemoteProtocolError:
            return Outcome("refused"), reader
        if message is not None:
            return (
                Outcome(
                    "response",
                    index,
                    message.status_code,
                    bytes(message.reason),
                    tuple((bytes(n), bytes(v)) for n, v in message.headers),
                    bytes(message.body),
                    message.keep_alive,
                    message.content_encoded,
                ),
                reader,
            )
    return Outcome("incomplete"), reader


def read_streaming(
    pieces: list[bytes], response: Response, progress: list[bytes]
) -> tuple[Outcome, _wire.ResponseReader]:
    """Feed ``pieces`` to a ResponseReader's ``feed_head``, then to its BodyReader.

    Appends to ``progress`` the body bytes each piece gave (until a refusal).
    """
    reader = _wire.ResponseReader(response.method, response.close_requested)
    feeds = [*pieces, b""] if response.peer_closes else pieces
    started = None
    for index, piece in enumerate(feeds):
        try:
            if started is None:
                started = reader.feed_head(piece)
                if started is None:
                    progress.append(b"")
                    continue
                head, body_reader, given = started
            else:
                given = body_reader.feed(piece)
        except _wire.RemoteProtocolError:
            return Outcome("refused"), reader
        progress.append(given)
        if body_reader.done:
            return (
                Outcome(
                    "response",
                    index,
                    head.status_code,
                    bytes(head.reason),
                    tuple((bytes(n), bytes(v)) for n, v in head.headers),
                    b"".join(progress),
                    head.keep_alive and body_reader.keep_alive,
                    head.content_encoded,
                ),
                reader,
            )
    return Outcome("incomplete"), reader


def read_with_h11(
    pieces: list[bytes], response: Response, progress: list[bytes] | None = None
) -> Outcome:
    """Feed the same to h11 as a client that sent ``response.method``, as the reference.

    With ``progress``, appends the body bytes each piece gave (until a refusal).
    """
    connection = h11.Connection(h11.CLIENT)
    headers = [(b"host", b"example.test")]
    if response.close_requested:
        headers.append((b"connection", b"close"))
    connection.send(h11.Request(method=response.method, target=b"/", headers=headers))
    connection.send(h11.EndOfMessage())
    final = None
    body = []
    feeds = [*pieces, b""] if response.peer_closes else pieces
    for index, piece in enumerate(feeds):
        before = len(body)
        try:
            connection.receive_data(piece)
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    if progress is not None:
                        progress.append(b"".join(body[before:]))
                    break
                if isinstance(event, h11.Response):
                    final = event
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    assert final is not None
                    if progress is not None:
                        progress.append(b"".join(body[before:]))
                    return Outcome(
                        "response",
                        index,
                        final.status_code,
                        bytes(final.reason),
                        tuple((bytes(n), bytes(v)) for n, v in final.headers.raw_items()),
                        b"".join(body),
                        connection.our_state is h11.DONE
                        and connection.their_state is h11.DONE
                        and not connection.trailing_data[0],
                        any(name == b"content-encoding" for name, _ in final.headers),
                    )
                elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return Outcome("refused")
        except h11.RemoteProtocolError:
            return Outcome("refused")
    return Outcome("incomplete")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (each taken modulo its length), no empty piece."""
    offsets = sorted({cut % len(data) for cut in cuts if cut % len(data)}) if data else []
    edges = [0, *offsets, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges) if end > start]


def check_same_as_h11(response: Response, pieces: list[bytes]) -> Outcome:
    """Assert the reader and h11 agree on ``pieces``, and that any fallback follows a rule."""
    ours, reader = read_with_reader(pieces, response)
    theirs = read_with_h11(pieces, response)
    assert ours == theirs, (response, pieces, reader.fallback_reason)
    if reader.fallback_reason is not None:
        # Handed to h11: only for a documented reason the response really has.
        assert reader.fallback_reason in response.features, (response, reader.fallback_reason)
    if not response.features:
        # Nothing irregular: the plain parser must have read it, not h11.
        assert reader.fallback_reason is None, (response, reader.fallback_reason)
    streamed_progress: list[bytes] = []
    streamed, streaming_reader = read_streaming(pieces, response, streamed_progress)
    h11_progress: list[bytes] = []
    read_with_h11(pieces, response, h11_progress)
    # Read as it arrives: the same answer, and the same body bytes from each piece.
    assert streamed == theirs, (response, pieces, streaming_reader.fallback_reason)
    assert streamed_progress == h11_progress, (response, pieces)
    assert streaming_reader.fallback_reason == reader.fallback_reason
    return ours


@pytest.mark.parametrize("fault_site", [None, *FAULT_SITES])
def test_reader_reads_every_response_as_h11_does_however_it_is_split(fault_site):
    """Whole, one byte at a time or in arbitrary pieces: the same answer (or refusal) as h11."""

    @settings(
        max_examples=300 if fault_site is None else 60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(response=responses(fault_site), cuts=st.lists(st.integers(0, 10_000), max_size=8))
    def read_both_ways(response: Response, cuts: list[int]) -> None:
        check_same_as_h11(response, [response.data])
        check_same_as_h11(response, split_at(response.data, cuts))
        check_same_as_h11(response, [response.data[i : i + 1] for i in range(len(response.data))])

    read_both_ways()


# A few responses of each framing, with the fallback rules each one touches.
REPRESENTATIVE = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"ok":true}',
        set(),
    ),
    (b"HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: 20\r\ncontent-length: 0\r\n\r\n", set()),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nWiki\r\n05 \r\npedia\r\n0\r\nx-trailer: 1\r\n folded\r\n\r\n",
        set(),
    ),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        {_wire.FALLBACK_STATUS},
    ),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", {_wire.FALLBACK_BARE_LF}),
    (b"HTTP/1.0 200 OK\r\n\r\nclose-delimited", {_wire.FALLBACK_NOT_HTTP_11}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", set()),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", set()),
    (
        b"HTTP/1.1 200 OK\r\nA: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
        {_wire.FALLBACK_IRREGULAR_HEAD},
    ),
]


@pytest.mark.parametrize(("data", "features"), REPRESENTATIVE)
@pytest.mark.parametrize("peer_closes", [False, True])
def test_reader_agrees_with_h11_at_every_split_point(data, features, peer_closes):
    """Every two-piece split of a few representative responses reads as h11 reads it."""
    response = Response(data, b"POST", False, peer_closes, features)
    for cut in range(1, len(data)):
        check_same_as_h11(response, [data[:cut], data[cut:]])


def test_plain_responses_are_read_without_h11():
    """Content-Length and chunked answers in the common shape never reach h11."""
    for data, _ in REPRESENTATIVE[:3]:
        reader = _wire.ResponseReader(b"POST", False)
        assert reader.feed(data) is not None
        assert reader.fallback_reason is None


# One response per documented fallback rule (a case h11 accepts, where one exists).
FALLBACK_EXAMPLES = [
    (_wire.FALLBACK_NOT_HTTP_11, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    (_wire.FALLBACK_NOT_HTTP_11, b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    (_wire.FALLBACK_BARE_LF, b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok"),
    (_wire.FALLBACK_BARE_LF, b"HTTP/1.1 200 OK\nA: 1\r\nContent-Length: 2\r\n\r\nok"),
    (_wire.FALLBACK_IRREGULAR_HEAD, b"HTTP/1.1 200 OK\r\nA: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"),
    (_wire.FALLBACK_IRREGULAR_HEAD, b"HTTP/1.1 200 OK\r\nA: \x7f\r\nContent-Length: 0\r\n\r\n"),
    (_wire.FALLBACK_IRREGULAR_HEAD, b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"),
    (
        _wire.FALLBACK_STATUS,
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    (_wire.FALLBACK_CONTENT_LENGTH, b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"),
    (
        _wire.FALLBACK_CONTENT_LENGTH,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
    ),
    (
        _wire.FALLBACK_TRANSFER_ENCODING,
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (_wire.FALLBACK_NO_FRAMING, b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nto the end"),
]


@pytest.mark.parametrize(("rule", "data"), FALLBACK_EXAMPLES)
def test_each_fallback_rule_hands_the_response_to_h11(rule, data):
    """Each documented rule sends its response to h11, which then reads it as h11 alone does."""
    response = Response(data, b"POST", False, True, {rule})
    ours, reader = read_with_reader([data], response)
    assert reader.fallback_reason == rule
    assert ours == read_with_h11([data], response)
    assert ours.kind == "response"


# Responses both refuse; the plain parser refuses those past a plain head itself.
REFUSED = [
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"2".rjust(21, b"0") + b"\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 ;x\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 21 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx y: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx: a\x0bb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA B: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
]


@pytest.mark.parametrize("data", REFUSED)
def test_what_h11_refuses_the_reader_refuses(data):
    """Malformed framing, trailers, names or status lines: refused by both."""
    response = Response(data, b"POST", False, True, set())
    assert read_with_reader([data], response)[0] == read_with_h11([data], response)
    assert read_with_h11([data], response).kind == "refused"


def test_incomplete_head_over_16_kib_is_refused_like_h11():
    """A head still incomplete past 16 KiB is refused by both (h11's own limit)."""
    data = b"HTTP/1.1 200 OK\r\nx-pad: " + b"a" * 17_000
    response = Response(data, b"POST", False, False, set())
    assert check_same_as_h11(response, [data]) == Outcome("refused")


def test_whole_head_over_16_kib_is_read_like_h11():
    """A long head that arrives whole is read by both, as h11 limits only incomplete heads."""
    data = b"HTTP/1.1 200 OK\r\nx-pad: " + b"a" * 17_000 + b"\r\ncontent-length: 1\r\n\r\nx"
    response = Response(data, b"POST", False, False, set())
    assert check_same_as_h11(response, [data]).body == b"x"


def test_reader_reports_a_close_before_the_end_as_a_protocol_error():
    """A peer that closes mid-head, mid-body or mid-chunk: RemoteProtocolError."""
    for data in (
        b"HTTP/1.1 200 OK\r\ncontent-le",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
    ):
        reader = _wire.ResponseReader(b"POST", False)
        assert reader.feed(data) is None
        with pytest.raises(_wire.RemoteProtocolError):
            reader.feed(b"")


def test_streamed_chunked_body_hands_out_each_chunk_as_it_arrives():
    """feed_head stops at the head; the body reader gives each chunk's bytes from its piece."""
    reader = _wire.ResponseReader(b"POST", False)
    assert reader.feed_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r") is None
    started = reader.feed_head(b"\n\r\n6\r\ndata: ")
    assert started is not None
    head, body, first = started
    assert (head.status_code, head.body, first) == (200, b"", b"data: ")
    assert body.feed(b"\r\n3\r\nx\n\n") == b"x\n\n"
    assert not body.done
    assert body.feed(b"\r\n0\r\n\r\n") == b""
    assert body.done and body.keep_alive and head.keep_alive


def test_streamed_close_delimited_body_ends_when_the_peer_closes():
    """A body without framing is read by h11 until the close, which ends it."""
    reader = _wire.ResponseReader(b"POST", False)
    started = reader.feed_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nab")
    assert started is not None
    _, body, first = started
    assert reader.fallback_reason == _wire.FALLBACK_NO_FRAMING
    assert first == b"ab"
    assert body.feed(b"cd") == b"cd"
    assert not body.done
    assert body.feed(b"") == b""
    assert body.done


def test_streamed_body_cut_short_is_a_protocol_error():
    """A peer that closes before the declared end of a streamed body: RemoteProtocolError."""
    for head_bytes in (
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
    ):
        started = _wire.ResponseReader(b"POST", False).feed_head(head_bytes)
        assert started is not None
        _, body, first = started
        assert first == b"ab"
        with pytest.raises(_wire.RemoteProtocolError):
            body.feed(b"")


def test_received_any_turns_true_with_the_first_byte():
    """``received_any`` tells the driver whether a closed connection may be retried."""
    reader = _wire.ResponseReader(b"POST", False)
    assert not reader.received_any
    reader.feed(b"H")
    assert reader.received_any


# --- requests: what we write, h11 as a server reads back -------------------------------------

HEADER_VALUE = st.binary(max_size=20).map(
    lambda raw: bytes(b for b in raw if 0x21 <= b <= 0x7E or b >= 0x80)
)
TARGET = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/?=&%+:@", min_size=0, max_size=30
).map(lambda path: b"/" + path.encode())


@st.composite
def requests(draw: st.DrawFn):
    method = draw(st.one_of(st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE"]), TOKEN))
    headers = [(draw(random_casing(b"host")), b"api.example.test")]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(COMMON_NAMES), TOKEN))
        if name.lower() in (b"host", b"content-length", b"transfer-encoding"):
            continue
        value, more = draw(HEADER_VALUE), draw(HEADER_VALUE)
        if value and more:
            value += draw(st.sampled_from([b" ", b"\t", b" \t "])) + more
        headers.append((draw(random_casing(name)), value))
    body_kind = draw(st.sampled_from(["none", "length", "chunked"]))
    pieces = draw(st.lists(st.binary(min_size=1, max_size=30), max_size=4))
    if body_kind == "length":
        headers.append((b"Content-Length", b"%d" % sum(map(len, pieces))))
    elif body_kind == "chunked":
        headers.append((draw(random_casing(b"transfer-encoding")), b"chunked"))
    else:
        pieces = []
    if draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    return method, draw(TARGET), headers, body_kind, pieces


def parse_request_with_h11(data: bytes):
    """h11 as a server: (request event, body bytes, their state after the message)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, h11.Request), request
    body = []
    while True:
        event = server.next_event()
        if isinstance(event, h11.Data):
            body.append(bytes(event.data))
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert not server.trailing_data[0]  # the framing ended where the request did
    return request, b"".join(body), server.their_state


@settings(max_examples=300, deadline=None)
@given(request=requests())
def test_h11_as_a_server_reads_back_what_we_write(request):
    """Method, target, headers (names as cased), body and connection close come back whole."""
    method, target, headers, body_kind, pieces = request
    line = _wire.request_line(_wire.method_token(method.decode()), target)
    block, chunked, close = _wire.header_block(headers)
    if chunked:
        body = b"".join(_wire.chunk(piece) for piece in pieces) + _wire.LAST_CHUNK
    else:
        body = b"".join(pieces)
    parsed, received, their_state = parse_request_with_h11(line + block + b"\r\n" + body)
    assert (parsed.method, parsed.target) == (method, target)
    expected = [
        (name, value.lower() if name.lower() == b"transfer-encoding" else value)
        for name, value in headers
    ]
    assert parsed.headers.raw_items() == expected
    assert received == b"".join(pieces)
    assert chunked == (body_kind == "chunked")
    assert close == (their_state is h11.MUST_CLOSE)


@pytest.mark.parametrize(
    ("method", "url", "headers", "content"),
    [
        ("POST", "http://api.test/v1/chat/completions", {"X-Id": "a b"}, b'{"a":1}'),
        ("GET", "http://api.test:8080/v1/models?limit=2&q=%20x", {}, None),
        ("PUT", "https://[::1]/path", {"Connection": "close"}, b"x" * 100),
        ("DELETE", "http://h/%E2%82%AC", {"Accept": "*/*"}, b""),
    ],
)
def test_httpx_requests_serialize_to_what_h11_reads(method, url, headers, content):
    """The driver's serializer writes httpx's request so that h11 reads the same request."""
    request = httpx.Request(method, url, headers=headers, content=content)
    head, method_bytes, chunked, close = _serialize_request(request)
    parsed, received, their_state = parse_request_with_h11(head + (content or b""))
    assert parsed.method == method_bytes == method.encode()
    assert parsed.target == request.url.raw_path
    assert parsed.headers.raw_items() == request.headers.raw
    assert received == (content or b"")
    assert (chunked, close) == (False, their_state is h11.MUST_CLOSE)


def test_streamed_httpx_request_serializes_as_chunked():
    """A streamed httpx body is announced as chunked; framed with _wire.chunk, h11 reads it."""

    async def stream():
        yield b"ab"
        yield b"cde"

    request = httpx.Request("POST", "http://api.test/upload", content=stream())
    head, _, chunked, _ = _serialize_request(request)
    assert chunked
    framed = head + _wire.chunk(b"ab") + _wire.chunk(b"cde") + _wire.LAST_CHUNK
    assert parse_request_with_h11(framed)[1] == b"abcde"


@pytest.mark.parametrize(
    ("headers", "we_refuse", "h11_refuses"),
    [
        # What could start a new line or is not a name: both refuse.
        ([(b"x-a", b"1\r\nx-injected: 1")], True, True),
        ([(b"x-a", b"1\nx")], True, True),
        ([(b"x-a", b"1\rx")], True, True),
        ([(b"x-a", b"1\x00")], True, True),
        ([(b"x a", b"1")], True, True),
        ([(b"x:a", b"1")], True, True),
        ([(b"", b"1")], True, True),
        # Documented rule: other irregular values are written as given.
        ([(b"x-a", b" padded ")], False, True),
        ([(b"x-a", b"vt\x0bff\x0c")], False, True),
        ([(b"x-a", b"ctl\x01\x7f")], False, False),
    ],
)
def test_serializer_refuses_only_what_could_start_a_new_line(headers, we_refuse, h11_refuses):
    """We refuse CR, LF, NUL and non-token names (as h11 does); other values are written."""
    headers = [(b"host", b"h"), *headers]
    try:
        _wire.header_block(headers)
    except _wire.LocalProtocolError:
        refused = True
    else:
        refused = False
    assert refused == we_refuse
    try:
        h11.Request(method=b"GET", target=b"/", headers=headers)
    except h11.LocalProtocolError:
        h11_refused = True
    else:
        h11_refused = False
    assert h11_refused == h11_refuses


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", b"/a\r\nx: 1"), ("GET", b"/a\x00"), ("G T", b"/"), ("GET\n", b"/"), ("", b"/")],
)
def test_request_line_refuses_what_could_start_a_new_line(method, target):
    """A method that is not a token, or CR, LF or NUL in the target: LocalProtocolError."""
    with pytest.raises(_wire.LocalProtocolError):
        _wire.request_line(_wire.method_token(method), target)


def test_header_block_reads_chunked_and_close_as_tokens():
    """``Transfer-Encoding: chunked`` and ``Connection: close`` count only as whole tokens."""
    assert _wire.header_block([(b"Transfer-Encoding", b"gzip, Chunked")])[1:] == (True, False)
    assert _wire.header_block([(b"Connection", b"keep-alive, CLOSE")])[1:] == (False, True)
    assert _wire.header_block([(b"Connection", b"closed")])[1:] == (False, False)
    assert _wire.header_block([(b"X-Connection", b"close")])[1:] == (False, False)
