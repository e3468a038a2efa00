"""Server-sent events read from a response body: bytes in, events out, no I/O.

A sans-IO decoder for the ``text/event-stream`` format as the WHATWG HTML
standard defines it ("Server-sent events", "Interpreting an event stream"),
which is what OpenAI-style APIs send when asked to ``"stream": true``.
:class:`SSEDecoder` is fed the body in whatever pieces the transport hands out
and returns the events each piece completes; ``tests/test_sse.py`` holds it to
the standard's examples and checks that any split of a stream gives the same
events as the stream fed whole.

The rules, as the standard gives them:

* Lines end in CRLF, LF or CR (a CRLF split between two pieces is one line
  end).  One byte-order mark at the very start of the stream is skipped.
* A line starting with ``:`` is a comment, ignored.  Otherwise the field name
  is what comes before the first ``:`` (the whole line if there is none) and
  the value what comes after it, less one leading space.
* ``data`` appends its value to the event's data (lines joined with ``\\n``);
  ``event`` sets the event type; ``id`` sets the last event ID unless its value
  holds a NUL (the ID persists from event to event, as the standard's "last
  event ID" does; an empty ``id:`` resets it to ``""``); ``retry`` is kept when
  its value is all ASCII digits; other fields are ignored.
* A blank line dispatches the event, unless it has no data line at all (then
  nothing is dispatched, and the type and retry are reset all the same).
* At the end of the body an event without its blank line is dropped.

The data are kept as UTF-8 bytes (``orjson.loads`` takes bytes; nothing is
decoded on the hot path); bytes that are not valid UTF-8 are replaced with
U+FFFD as the standard's decoding step would.  The event type and ID are
``str``.  Nothing here checkpoints or blocks.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_DEFAULT_EVENT = "message"


class ServerSentEvent(NamedTuple):
    """One dispatched event (a named tuple: one is built per token on a
    benchmark's hot path, where a frozen attrs instance cost three times as much).

    Attributes:
        data: the event's ``data`` lines joined with ``\\n``, as UTF-8 bytes.
        event: the event type (default ``"message"`` when no ``event`` field
            gave one).
        id: the last event ID at dispatch (default None: no ``id`` field seen
            yet in the stream; it carries over to later events).
        retry: the reconnection time in milliseconds from a ``retry`` field in
            this event's lines (default None: none, or not all digits).
    """

    data: bytes
    event: str = _DEFAULT_EVENT
    id: str | None = None
    retry: int | None = None


def _utf8(data: bytes) -> bytes:
    """``data`` unchanged if valid UTF-8, else with each bad sequence replaced by U+FFFD."""
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")
    return data


class SSEDecoder:
    """Turns the bytes of an event stream into :class:`ServerSentEvent` values (sans-IO).

    Feed each piece of the body as it arrives with :meth:`feed` (any split
    works, including inside a CRLF or a UTF-8 sequence) and call :meth:`close`
    at the end of the body.  One decoder reads one stream.

    The common piece of an OpenAI stream, whole ``data: ...`` events with LF
    line ends, is read without copying anything but each event's data.
    """

    __slots__ = (
        "_after_cr",
        "_between_events",
        "_data",
        "_event",
        "_id",
        "_partial",
        "_retry",
        "_started",
    )

    def __init__(self) -> None:
        # The start of the stream while a byte-order mark may still be arriving
        # (None once past it).
        self._started: bytes | None = b""
        # The previous piece ended in CR: an LF starting this one ends no line.
        self._after_cr = False
        # The last, unterminated line of what was fed, in pieces (usually none).
        self._partial: list[bytes] = []
        # The event being read: its data lines, type, retry; and the last event ID.
        self._data: list[bytes] = []
        self._event = ""
        self._retry: int | None = None
        self._id: str | None = None
        # Nothing pending (no partial line, event fields or CR): the fast path may run.
        self._between_events = True

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Take the next bytes of the body; return the events they complete, in order."""
        if self._between_events and b"\r" not in data:
            # The fast path: whole "data: ...\n\n" events, LF line ends, nothing pending.
            events: list[ServerSentEvent] = []
            last_id = self._id
            position = 0
            size = len(data)
            while position < size and data.startswith(b"data: ", position):
                end = data.find(b"\n", position)
                if end < 0 or end + 1 == size or data[end + 1] != 10:
                    break  # not a one-line event ending in a blank line
                line = data[position + 6 : end]
                line = line if line.isascii() else _utf8(line)
                events.append(ServerSentEvent(line, _DEFAULT_EVENT, last_id))
                position = end + 2
            if position:
                self._started = None  # past the start: a BOM can no longer come
                if position == size:
                    return events
            elif not size:
                return events
            self._between_events = False
            if position:
                return events + self._feed_lines(data[position:])
            return self._feed_lines(data)
        return self._feed_lines(data)

    def _feed_lines(self, data: bytes) -> list[ServerSentEvent]:
        """:meth:`feed` line by line, for any input (the fast path's fallback)."""
        if self._started is not None:
            data = self._skip_bom(data)
        if self._after_cr and data:
            self._after_cr = False
            if data[0] == 10:  # the LF of a CRLF split between pieces
                data = data[1:]
        if b"\r" in data:
            if data[-1] == 13:
                self._after_cr = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif b"\n" not in data:
            if data:
                self._partial.append(data)
            return []
        lines = data.split(b"\n")
        partial = self._partial
        if partial:
            partial.append(lines[0])
            lines[0] = b"".join(partial)
            partial.clear()
        last = lines.pop()
        if last:
            partial.append(last)
        events: list[ServerSentEvent] = []
        data_lines = self._data
        for line in lines:
            if not line:
                if data_lines:
                    events.append(self._dispatch())
                    data_lines = self._data
                else:
                    self._event = ""
                    self._retry = None
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] != 58:  # not a ":" comment
                self._field(line)
        self._between_events = not (
            partial or self._after_cr or self._data or self._event or self._retry is not None
        )
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of the body: drop an unterminated event (as the standard does); returns ``[]``."""
        self._partial.clear()
        self._data = []
        self._event = ""
        self._retry = None
        self._after_cr = False
        self._between_events = True
        return []

    def _skip_bom(self, data: bytes) -> bytes:
        """``data`` less the part of a byte-order mark at the start of the stream."""
        assert self._started is not None
        started = self._started + data
        if len(started) < len(_BOM) and _BOM.startswith(started):
            self._started = started  # maybe a BOM, still arriving
            return b""
        self._started = None
        return started[len(_BOM) :] if started.startswith(_BOM) else started

    def _dispatch(self) -> ServerSentEvent:
        data_lines = self._data
        data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        event = ServerSentEvent(_utf8(data), self._event or _DEFAULT_EVENT, self._id, self._retry)
        self._data = []
        self._event = ""
        self._retry = None
        return event

    def _field(self, line: bytes) -> None:
        """Apply a field line other than ``data``."""
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" with no colon: an empty data line
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
