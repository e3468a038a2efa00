"""HTTP/1.1 as the engine's transport writes and reads it: bytes in, bytes out, no I/O.

A sans-IO module in the spirit of h11: nothing here touches a socket, a clock
or trio, so every rule is tested with plain bytes (``tests/test_wire.py``
feeds the same generated responses to :class:`ResponseReader` and to h11 and
requires the same answer).  :mod:`engine._http` is the trio driver around it.

Writing a request:

* :func:`method_token` and :func:`request_line` check and build the request
  line; :func:`header_block` checks and joins header lines and says whether
  they ask for chunked transfer coding or ``Connection: close``.  They refuse
  (:class:`LocalProtocolError`) a method or header name that is not an HTTP
  token and any CR, LF or NUL in the target or a value: nothing a caller
  passes can start a new line.  Other bytes in values (a vertical tab, say)
  are written as given; a strict server may refuse them, as it may refuse any
  value.
* :func:`chunk` frames one piece of a streamed body; :data:`LAST_CHUNK` ends it.

Reading a response (:class:`ResponseReader`): the common shape (HTTP/1.1, a
final status, header lines in the plain grammar with CRLF line ends, a body
framed by one Content-Length or by chunked coding) is read by this module's
own parser, which costs a few microseconds where h11 costs ~70.  Anything
else is handed, with every byte received so far, to h11, which stays the
authority on the protocol's corners; ``fallback_reason`` then says why (one of
the ``FALLBACK_*`` constants).  Either way the result is h11's: the same
status, reason, headers, body and connection reuse, or the same refusal.

Reading a response as it arrives (for streamed bodies such as server-sent
events): :meth:`ResponseReader.feed_head` stops at the end of the head and
hands over a :class:`BodyReader`, which turns each piece received into the
body bytes it holds (Content-Length and chunked bodies by this module's own
decoder; a body read by h11, close-delimited ones included, by h11).  Its
answers are h11's too, piece by piece.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import h11

__all__ = [
    "FALLBACK_BARE_LF",
    "FALLBACK_CONTENT_LENGTH",
    "FALLBACK_IRREGULAR_HEAD",
    "FALLBACK_NOT_HTTP_11",
    "FALLBACK_NO_FRAMING",
    "FALLBACK_STATUS",
    "FALLBACK_TRANSFER_ENCODING",
    "LAST_CHUNK",
    "MAX_INCOMPLETE_SIZE",
    "BodyReader",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ResponseMessage",
    "ResponseReader",
    "chunk",
    "header_block",
    "method_token",
    "request_line",
]


class LocalProtocolError(Exception):
    """A request this module will not write (it could start a new line or is not HTTP)."""


class RemoteProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response (or it closed mid-response)."""


# --- writing requests ---------------------------------------------------------

# An HTTP token (RFC 9110 §5.6.2): what a method or header name may be made of.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TOKEN_LINES = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:\n[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*")
# Lists of header names (joined by newlines) already checked against
# _TOKEN_LINES: a worker sends the same names on every request, so each list
# is checked once (at most _CHECKED_NAMES_KEPT lists are remembered).
_checked_header_names: set[bytes] = set()
_CHECKED_NAMES_KEPT = 1024
_method_tokens: dict[str, bytes] = {}

#: Ends a body sent with chunked transfer coding (no trailers).
LAST_CHUNK = b"0\r\n\r\n"


def method_token(method: str) -> bytes:
    """``"POST"`` -> ``b"POST"``; raises :class:`LocalProtocolError` unless a token."""
    token = _method_tokens.get(method)
    if token is None:
        token = method.encode("ascii", "replace")
        if _TOKEN.fullmatch(token) is None:
            raise LocalProtocolError(f"illegal method {method!r}")
        if len(_method_tokens) < _CHECKED_NAMES_KEPT:
            _method_tokens[method] = token
    return token


def request_line(method: bytes, target: bytes) -> bytes:
    """``METHOD TARGET HTTP/1.1`` and CRLF, for a ``method`` from :func:`method_token`.

    Raises :class:`LocalProtocolError` when ``target`` holds CR, LF or NUL.
    """
    line = b"%s %s HTTP/1.1\r\n" % (method, target)
    if line.count(b"\n") != 1 or line.count(b"\r") != 1 or b"\0" in line:
        raise LocalProtocolError("illegal character in request line or header")
    return line


def header_block(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bool, bool]:
    """Return (the header lines, each ending in CRLF; body is chunked; connection closes).

    Names and values are written as given (name, colon, space, value).  The
    body is chunked when a Transfer-Encoding header names ``chunked``; the
    connection closes after the answer when a Connection header names
    ``close``.  Raises :class:`LocalProtocolError` for a name that is not a
    token, or CR, LF or NUL in a value.  An empty ``headers`` gives ``b""``.
    """
    if not headers:
        return b"", False, False
    joined_names = b"\n".join([name for name, _ in headers])
    if joined_names not in _checked_header_names:
        if _TOKEN_LINES.fullmatch(joined_names) is None:
            raise LocalProtocolError(f"illegal header name in {[n for n, _ in headers]!r}")
        if len(_checked_header_names) >= _CHECKED_NAMES_KEPT:
            _checked_header_names.clear()
        _checked_header_names.add(joined_names)
    block = b"\r\n".join(map(b": ".join, headers)) + b"\r\n"
    # Names are tokens, so every CR or LF beyond one per line is in a value.
    lines = len(headers)
    if block.count(b"\n") != lines or block.count(b"\r") != lines or b"\0" in block:
        raise LocalProtocolError("illegal character in request line or header")
    chunked = close = False
    lowered_names = joined_names.lower()
    if b"transfer-encoding" in lowered_names or b"connection" in lowered_names:
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                chunked = b"chunked" in _comma_tokens(value)
            elif lowered == b"connection":
                close = close or b"close" in _comma_tokens(value)
    return block, chunked, close


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (``data`` must not be empty)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _comma_tokens(value: bytes) -> list[bytes]:
    """The lower-cased, stripped, non-empty items of a comma-separated header value."""
    return [item for item in (part.strip(b" \t") for part in value.lower().split(b",")) if item]


# --- reading responses --------------------------------------------------------

#: The header names a response head is read differently for.
_FRAMING_NAMES = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"content-encoding")
)

#: The most bytes held while a response head, a chunk-size line or a trailer
#: section is still incomplete (h11's default, so both refuse the same heads).
MAX_INCOMPLETE_SIZE = 16 * 1024

# Why a response was handed to h11 (ResponseReader.fallback_reason).
#: The status line is not ``HTTP/1.1 `` (another version, or not HTTP at all).
FALLBACK_NOT_HTTP_11 = "status line is not HTTP/1.1"
#: A line of the head ends in a bare LF instead of CRLF.
FALLBACK_BARE_LF = "bare LF line ending in the head"
#: The status line or a header line is outside the plain grammar: a folded
#: (obs-fold) line, a control character other than tab, a header name that is
#: not a token, whitespace before a colon, a line with no colon.
FALLBACK_IRREGULAR_HEAD = "status or header line outside the plain grammar"
#: A 1xx status (informational, then the final response), or a CONNECT request.
FALLBACK_STATUS = "informational status or CONNECT"
#: Content-Length repeated, a comma list, not digits, or more than 20 digits.
FALLBACK_CONTENT_LENGTH = "Content-Length not one plain number"
#: Transfer-Encoding other than one ``chunked``, or together with Content-Length.
FALLBACK_TRANSFER_ENCODING = "Transfer-Encoding not one plain chunked"
#: Neither Content-Length nor Transfer-Encoding: the body ends when the server closes.
FALLBACK_NO_FRAMING = "body delimited by connection close"

_HTTP_11_PREFIX = b"HTTP/1.1 "
# Status line and header lines in the shape nearly every server sends: printable
# ASCII, tab and obs-text in the reason and values, token names, CRLF line ends.
_PLAIN_HEAD = re.compile(
    rb"HTTP/1\.1 ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)"
)
_NO_BODY_STATUSES = frozenset({204, 304})
# A chunk-size line: hex size (at most 20 digits), any extension after ';',
# optional whitespace (as h11 accepts it), CRLF.
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*\r\n")
# A trailer field line (after unfolding): token, colon, a value without
# NUL, CR, LF, VT or FF.
_FIELD_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[^\x00\n\r\x0b\x0c]*")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_END_OF_MESSAGE = h11.EndOfMessage()
# Request-side events fed to h11 in place of the real request, keyed by
# (method, connection close): see _stand_in_request.
_stand_in_requests: dict[tuple[bytes, bool], h11.Request] = {}


class ResponseMessage:
    """A whole response as read from the wire.

    Attributes:
        status_code: the final status (1xx responses before it are skipped).
        reason: the reason phrase (``b""`` when there is none).
        headers: (name, value) pairs in wire order, names as the server cased
            them, values without surrounding whitespace.
        body: the body, without transfer coding (still content-encoded).
        keep_alive: the connection may carry the next request: HTTP/1.1, no
            ``close`` on either side, and no byte received past the response.
        content_encoded: a Content-Encoding header is present.
    """

    __slots__ = ("body", "content_encoded", "headers", "keep_alive", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        content_encoded: bool,
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.content_encoded = content_encoded

    def __repr__(self) -> str:
        return f"<ResponseMessage {self.status_code} {len(self.body)} bytes>"


class ResponseReader:
    """Reads one response, fed the bytes as they arrive (sans-IO).

    Args:
        method: the request's method (``b"HEAD"`` answers have no body).
        close_requested: the request asked for ``Connection: close``.

    Call :meth:`feed` with each piece received, and with ``b""`` when the
    peer closed the connection; it returns None while it needs more bytes,
    then the :class:`ResponseMessage`.  It raises :class:`RemoteProtocolError`
    where h11 would refuse the bytes.  ``fallback_reason`` is None while this
    module's own parser reads the response, else the ``FALLBACK_*`` reason it
    was handed to h11.  Nothing here checkpoints or blocks.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_close_requested",
        "_h11",
        "_h11_body",
        "_h11_response",
        "_head",
        "_method",
        "_parts",
        "_searched",
        "_to_read",
        "fallback_reason",
    )
    # The attributes set only when needed (see __init__), declared for the type checker.
    _to_read: int
    _parts: list[bytes]
    _body: BodyReader
    _h11_response: h11.Response | None
    _h11_body: list[bytes]

    def __init__(self, method: bytes, close_requested: bool) -> None:
        self._method = method
        self._close_requested = close_requested
        # Bytes received and not consumed yet: a head, a chunk-size line, trailers.
        self._buffer = b""
        # Where the search for the head's end resumes (what was searched cannot match).
        self._searched = 0
        # The head once parsed; its body is filled in when complete.
        self._head: ResponseMessage | None = None
        # After a fall-back: h11's state machine.
        self._h11: h11.Connection | None = None
        self.fallback_reason: str | None = None
        # Set when needed (most responses arrive whole and need none of them):
        # _to_read: Content-Length body bytes still to come, -1 for chunked coding;
        # _parts: body bytes received so far, when the body came in pieces;
        # _body: the decoder of a chunked body;
        # _h11_response, _h11_body: what h11 has read so far.

    @property
    def received_any(self) -> bool:
        """True once any byte of the response has been fed."""
        return bool(self._buffer) or self._head is not None or self._h11 is not None

    def feed(self, data: bytes) -> ResponseMessage | None:
        """Take the next bytes received (``b""``: the peer closed); the response, or None.

        Raises :class:`RemoteProtocolError` on a malformed or truncated response.
        """
        if self._head is not None:
            if not data:
                raise RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            if self._to_read < 0:
                return self._read_chunks(data)
            return self._read_content(data)
        if self._h11 is not None:
            return self._feed_h11(data)
        return self._feed_head(data)

    def feed_head(self, data: bytes) -> tuple[ResponseMessage, BodyReader, bytes] | None:
        """Take the next bytes received (``b""``: the peer closed); stop at the end of the head.

        Returns None while the head is incomplete, then (the head, with an
        empty ``body``; the :class:`BodyReader` that reads the body from the
        bytes received next; the body bytes that arrived with the head).
        Use either this or :meth:`feed` on one reader.  The head's
        ``keep_alive`` says what its headers allow; the connection may carry
        the next request only if the body reader's ``keep_alive`` is true too.
        Raises :class:`RemoteProtocolError` on a malformed or truncated head.
        """
        if self._h11 is not None:
            return self._feed_h11_head(data)
        buffer, body_start = self._take_head(data)
        if body_start is None:
            return None
        if isinstance(body_start, str):
            self._start_h11(body_start)
            return self._feed_h11_head(buffer)
        head = self._head
        assert head is not None
        body = BodyReader(self._to_read)
        rest = buffer[body_start:]
        return head, body, body.feed(rest) if rest else b""

    # -- the head

    def _take_head(self, data: bytes) -> tuple[bytes, int | str | None]:
        """Add ``data`` to the head received so far: (all of it, where the body starts).

        The second item is None while the head is incomplete (the bytes are
        kept), or the ``FALLBACK_*`` reason when h11 must read the response;
        once it is an offset, ``_head`` is the head and ``_to_read`` its framing.
        """
        if not data:
            raise RemoteProtocolError("server disconnected mid-response head")
        buffer = self._buffer + data if self._buffer else data
        if not buffer.startswith(_HTTP_11_PREFIX) and (
            len(buffer) >= len(_HTTP_11_PREFIX) or not _HTTP_11_PREFIX.startswith(buffer)
        ):
            return buffer, FALLBACK_NOT_HTTP_11
        # The head ends at the first blank line as h11 finds it: LF, optional CR, LF.
        blank = buffer.find(b"\n\r\n", self._searched)
        bare = buffer.find(b"\n\n", self._searched, len(buffer) if blank < 0 else blank + 1)
        if bare >= 0:
            return buffer, FALLBACK_BARE_LF
        if blank < 0:
            if len(buffer) > MAX_INCOMPLETE_SIZE:
                raise RemoteProtocolError("response head too long")
            self._buffer = buffer
            self._searched = max(0, len(buffer) - 2)
            return buffer, None
        if buffer[blank - 1] != 13:  # the last header line ends in a bare LF
            return buffer, FALLBACK_BARE_LF
        head = self._parse_head(buffer, blank + 1)
        if isinstance(head, str):
            return buffer, head
        self._head = head
        self._buffer = b""
        return buffer, blank + 3

    def _feed_head(self, data: bytes) -> ResponseMessage | None:
        buffer, body_start = self._take_head(data)
        if body_start is None:
            return None
        if isinstance(body_start, str):
            return self._fall_back(buffer, body_start)
        head = self._head
        assert head is not None
        if self._to_read < 0:
            self._parts = []
            self._body = BodyReader(-1)
            rest = buffer[body_start:]
            return self._read_chunks(rest) if rest else None
        body_end = body_start + self._to_read
        if len(buffer) >= body_end:
            # The common case: the whole response arrived with its head.
            head.body = buffer[body_start:body_end]
            head.keep_alive = head.keep_alive and len(buffer) == body_end
            return head
        self._parts = [buffer[body_start:]]
        self._to_read = body_end - len(buffer)
        return None

    def _parse_head(self, buffer: bytes, end: int) -> ResponseMessage | str:
        """The head in ``buffer[:end]`` (it ends in CRLF), or why h11 must read it.

        Sets ``_to_read`` to the Content-Length (0 for an answer without a
        body: to HEAD, 204, 304), or -1 for chunked coding.
        """
        match = _PLAIN_HEAD.fullmatch(buffer, 0, end)
        if match is None:
            if buffer.count(b"\n", 0, end) != buffer.count(b"\r\n", 0, end):
                return FALLBACK_BARE_LF
            return FALLBACK_IRREGULAR_HEAD
        status_code = int(match[1])
        if status_code < 200 or self._method == b"CONNECT":
            return FALLBACK_STATUS
        headers = []
        content_length: bytes | None = None
        chunked = False
        keep_alive = not self._close_requested
        content_encoded = False
        for line in match[3].split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            value = value.strip(b" \t")
            lowered = name.lower()
            if lowered not in _FRAMING_NAMES:
                pass  # most headers: one set lookup instead of four comparisons
            elif lowered == b"content-length":
                if content_length is not None or not value.isdigit() or len(value) > 20:
                    return FALLBACK_CONTENT_LENGTH
                content_length = value
            elif lowered == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    return FALLBACK_TRANSFER_ENCODING
                chunked = True
                value = b"chunked"  # h11 reports the coding lower-cased
            elif lowered == b"connection":
                if b"close" in _comma_tokens(value):
                    keep_alive = False
            elif lowered == b"content-encoding":
                content_encoded = True
            headers.append((name, value))
        if chunked and content_length is not None:
            return FALLBACK_TRANSFER_ENCODING
        if self._method == b"HEAD" or status_code in _NO_BODY_STATUSES:
            self._to_read = 0
        elif chunked:
            self._to_read = -1
        elif content_length is not None:
            self._to_read = int(content_length)
        else:
            return FALLBACK_NO_FRAMING
        return ResponseMessage(
            status_code, match[2] or b"", headers, b"", keep_alive, content_encoded
        )

    # -- the body

    def _read_content(self, data: bytes) -> ResponseMessage | None:
        """Take more of a Content-Length body."""
        to_read = self._to_read
        if len(data) < to_read:
            self._parts.append(data)
            self._to_read = to_read - len(data)
            return None
        self._parts.append(data[:to_read])
        return self._finish(extra_bytes=len(data) > to_read)

    def _read_chunks(self, data: bytes) -> ResponseMessage | None:
        """Take more of a chunked body."""
        body = self._body
        piece = body.feed(data)
        if piece:
            self._parts.append(piece)
        if body.done:
            return self._finish(extra_bytes=body.extra_bytes)
        return None

    def _finish(self, extra_bytes: bool) -> ResponseMessage:
        head = self._head
        assert head is not None
        head.body = b"".join(self._parts)
        # Bytes past the response were never asked for: do not trust the connection.
        head.keep_alive = head.keep_alive and not extra_bytes
        return head

    # -- h11, for everything else

    def _start_h11(self, reason: str) -> None:
        """Set up h11 to read the response, for ``reason``."""
        self.fallback_reason = reason
        self._buffer = b""
        self._h11_response = None
        self._h11_body = []
        state = self._h11 = h11.Connection(h11.CLIENT)
        state.send(_stand_in_request(self._method, self._close_requested))
        state.send(_END_OF_MESSAGE)

    def _fall_back(self, buffer: bytes, reason: str) -> ResponseMessage | None:
        """Hand the response, from its first byte, to h11."""
        self._start_h11(reason)
        return self._feed_h11(buffer)

    def _feed_h11_head(self, data: bytes) -> tuple[ResponseMessage, BodyReader, bytes] | None:
        """:meth:`feed_head` once h11 reads the response."""
        state = self._h11
        assert state is not None
        try:
            state.receive_data(data)
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.Response):
                    break
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError("connection ended before the response did")
                # An InformationalResponse (1xx) is skipped: the final response follows.
        except h11.RemoteProtocolError as error:
            raise RemoteProtocolError(str(error)) from error
        head = ResponseMessage(
            event.status_code,
            event.reason,
            event.headers.raw_items(),
            b"",
            True,  # h11 decides, with the body: see BodyReader.keep_alive
            any(name == b"content-encoding" for name, _ in event.headers),
        )
        body = BodyReader(-1, state)
        return head, body, body.feed_h11_buffered()

    def _feed_h11(self, data: bytes) -> ResponseMessage | None:
        state = self._h11
        assert state is not None
        try:
            state.receive_data(data)
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.Data):
                    self._h11_body.append(event.data)
                elif isinstance(event, h11.Response):
                    self._h11_response = event
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    # Cannot happen before EndOfMessage; guard against spinning if it did.
                    raise RemoteProtocolError("connection ended before the response did")
                # An InformationalResponse (1xx) is skipped: the final response follows.
        except h11.RemoteProtocolError as error:
            raise RemoteProtocolError(str(error)) from error
        response = self._h11_response
        assert response is not None
        keep_alive = (
            state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and not state.trailing_data[0]
        )
        return ResponseMessage(
            response.status_code,
            response.reason,
            response.headers.raw_items(),
            b"".join(self._h11_body),
            keep_alive,
            any(name == b"content-encoding" for name, _ in response.headers),
        )


class BodyReader:
    """Reads one response body as it arrives, fed the bytes after the head (sans-IO).

    Made by :meth:`ResponseReader.feed_head` (and used by
    :class:`ResponseReader` for chunked bodies).  :meth:`feed` takes each piece
    received and returns the body bytes it holds, without transfer coding
    (``b""`` when it held only framing); ``done`` turns true at the body's
    end.  A Content-Length or chunked body is decoded here; a body h11 reads
    (any response the plain head parser handed to h11, close-delimited bodies
    included) is read by h11, with h11's rules.  Nothing here checkpoints.

    Args:
        to_read: the Content-Length, or -1 for chunked coding (or h11).
        h11_state: the h11 connection that read the head, when h11 reads
            the body (default None).
    """

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_h11",
        "_in_trailer",
        "_to_read",
        "_unread_crlf",
        "done",
        "extra_bytes",
    )

    def __init__(self, to_read: int, h11_state: h11.Connection | None = None) -> None:
        # Content-Length bytes still to come, or -1: chunked coding.
        self._to_read = to_read
        # Chunked coding: unconsumed bytes (a chunk-size line, trailers), data
        # bytes of the current chunk still to come, what of the CRLF after a
        # chunk's data is still to come, whether the trailers are being read.
        self._buffer = b""
        self._chunk_left = 0
        self._unread_crlf = b""
        self._in_trailer = False
        self._h11 = h11_state
        #: The body is complete.
        self.done = to_read == 0 and h11_state is None
        #: Bytes arrived past the body's end (the connection cannot be trusted).
        self.extra_bytes = False

    @property
    def keep_alive(self) -> bool:
        """The body ended and, as far as the body is concerned, the connection may be reused.

        False when bytes arrived past the body, or when h11 reads the response
        and says the connection must close (HTTP/1.0, ``Connection: close`` on
        either side).  For a body this module decodes, the head's own
        ``keep_alive`` says the rest.  A peer that closed (a close-delimited
        body ends so) is for the driver to note: as for h11, it is not a
        reason here.
        """
        if not self.done or self.extra_bytes:
            return False
        state = self._h11
        return state is None or (
            state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and not state.trailing_data[0]
        )

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes received (``b""``: the peer closed); return the body bytes in them.

        Raises :class:`RemoteProtocolError` where h11 would refuse the bytes,
        including a peer that closed before the body's end.  Bytes fed after
        the end are not body: they set ``extra_bytes``.
        """
        if self.done:
            if data:
                self.extra_bytes = True
            return b""
        if self._h11 is not None:
            self._h11.receive_data(data)
            return self.feed_h11_buffered()
        if not data:
            raise RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )
        to_read = self._to_read
        if to_read < 0:
            return self._read_chunks(self._buffer + data if self._buffer else data)
        if len(data) < to_read:
            self._to_read = to_read - len(data)
            return data
        self._to_read = 0
        self.done = True
        if len(data) > to_read:
            self.extra_bytes = True
            return data[:to_read]
        return data

    def feed_h11_buffered(self) -> bytes:
        """The body bytes h11 can give from what it holds already (h11's body only)."""
        state = self._h11
        assert state is not None
        parts = []
        try:
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.done = True
                    break
                else:  # PAUSED or ConnectionClosed cannot come before EndOfMessage
                    raise RemoteProtocolError("connection ended before the response did")
        except h11.RemoteProtocolError as error:
            raise RemoteProtocolError(str(error)) from error
        return b"".join(parts)

    def _read_chunks(self, buffer: bytes) -> bytes:
        """Decode chunked coding from ``buffer`` (what was left unconsumed, then new bytes)."""
        parts = []
        position = 0
        if not (self._chunk_left or self._unread_crlf or self._in_trailer):
            # At a chunk's start: take the whole chunks in the buffer in one tight
            # loop.  Anything else (a chunk cut short, the last chunk, an error)
            # is left to the state machine below, from the first such chunk on.
            size = len(buffer)
            while True:
                line_end = buffer.find(b"\r\n", position)
                digits = buffer[position:line_end]
                # Plain hex digits only (an extension or whitespace: the state machine).
                if line_end < 0 or not 0 < len(digits) <= 20 or digits.strip(_HEX_DIGITS):
                    break
                start = line_end + 2
                end = start + int(digits, 16)
                if end == start or end + 2 > size or buffer[end : end + 2] != b"\r\n":
                    break
                parts.append(buffer[start:end])
                position = end + 2
            if position == size:
                self._buffer = b""
                return b"".join(parts)
        while True:
            if self._chunk_left:
                piece = buffer[position : position + self._chunk_left]
                if not piece:
                    break
                parts.append(piece)
                position += len(piece)
                self._chunk_left -= len(piece)
                if self._chunk_left:
                    break
                self._unread_crlf = b"\r\n"
            if self._unread_crlf:
                expected = self._unread_crlf
                got = buffer[position : position + len(expected)]
                if got != expected[: len(got)]:
                    raise RemoteProtocolError(f"malformed chunk footer: {got!r}")
                position += len(got)
                self._unread_crlf = expected[len(got) :]
                if self._unread_crlf:
                    break
            if self._in_trailer:
                end = _trailer_end(buffer, position)
                if end < 0:
                    break
                self._buffer = b""
                self.done = True
                self.extra_bytes = end < len(buffer)
                return b"".join(parts)
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size_line = _CHUNK_SIZE_LINE.fullmatch(buffer, position, line_end + 2)
            if size_line is None:
                raise RemoteProtocolError(
                    f"illegal chunk header: {buffer[position : line_end + 2]!r}"
                )
            position = line_end + 2
            self._chunk_left = int(size_line[1], 16)
            if not self._chunk_left:
                self._in_trailer = True
        self._buffer = buffer = buffer[position:]
        if len(buffer) > MAX_INCOMPLETE_SIZE:
            raise RemoteProtocolError("chunk-size line or trailer section too long")
        return b"".join(parts)


def _trailer_end(buffer: bytes, start: int) -> int:
    """Where the trailer section starting at ``buffer[start]`` ends (-1: not yet).

    The section ends at the first blank line (LF, optional CR, LF), or at once
    when it starts with an empty line, as h11 reads it.  Raises
    :class:`RemoteProtocolError` when a trailer line is not a valid field line.
    """
    if buffer[start : start + 1] == b"\n":
        return start + 1
    if buffer[start : start + 2] == b"\r\n":
        return start + 2
    blank = _BLANK_LINE.search(buffer, start)
    if blank is None:
        return -1
    lines = [
        line[:-1] if line.endswith(b"\r") else line
        for line in buffer[start : blank.end()].split(b"\n")[:-2]
    ]
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # obs-fold: a continuation of the previous line.
            if not unfolded:
                raise RemoteProtocolError("continuation line at start of trailers")
            unfolded[-1] += b" " + line.lstrip(b" \t")
        else:
            unfolded.append(line)
    for line in unfolded:
        if _FIELD_LINE.fullmatch(line) is None:
            raise RemoteProtocolError(f"illegal trailer line: {line!r}")
    return blank.end()


def _stand_in_request(method: bytes, close: bool) -> h11.Request:
    """The h11 event that stands for a request of ``method`` in h11's state machine.

    The transport writes request bytes itself (h11's per-header validation
    is the costliest step of a request) and tells h11 only what matters for
    reading the response: the method (HEAD answers have no body) and whether
    the connection closes after.
    """
    key = (method, close)
    event = _stand_in_requests.get(key)
    if event is None:
        headers = [(b"host", b"_")]
        if close:
            headers.append((b"connection", b"close"))
        event = _stand_in_requests[key] = h11.Request(method=method, target=b"/", headers=headers)
    return event
