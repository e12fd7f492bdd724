"""Limits on slow or faulty HTTP clients that sit below the app: a deadline for request headers,
and warnings that stay readable when many clients misbehave at once.

uvicorn 0.55 closes a kept-alive connection that stays idle after a response. It closes
neither a new connection that sends nothing nor one whose request headers stop arriving, so
such a client keeps its connection, and one of ``limit_concurrency``'s slots, for as long as
it likes.
``header_timeout_protocol`` returns uvicorn's HTTP/1.1 protocol (h11) with a deadline for
request headers. It runs from the moment a connection is accepted until its first request's
headers are complete, and for a later request from its first byte, or from the end of the
previous response when that request's first bytes came early (pipelining). Past the deadline
a client that sent part of a request gets 408 ``header_timeout``, and a silent one gets nothing;
either way the connection is closed. Such requests never reach the app, so the protocol reports
each closed connection to an ``on_timeout`` callback instead, which ``vqbench serve`` points at
the counters that ``/metrics`` shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from vqbench.text import plural

logger = logging.getLogger(__name__)

#: Default deadline, in seconds, for a request's line and headers (the module docstring explains
#: when it starts). A request's headers are a few hundred bytes, so a healthy client sends
#: them in one segment.
DEFAULT_HEADER_TIMEOUT_S = 30.0


class RateLimitedWarnings:
    """Log events of one kind as warnings, at most one per ``interval_s``; the others go to DEBUG.

    A link that drops many uploads, or a client that keeps sending a wrong token, would
    otherwise fill the log with one warning each. The first warning after a quiet spell gives
    the number it left out.
    """

    def __init__(
        self,
        event: str,
        log: logging.Logger,
        interval_s: float = 60.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.log = log
        self.interval_s = interval_s
        self.clock_s = clock_s
        self._last_warning_s: float | None = None
        self._left_out = 0

    def record(self, line: str) -> None:
        now_s = self.clock_s()
        if self._last_warning_s is not None and now_s - self._last_warning_s < self.interval_s:
            self._left_out += 1
            self.log.debug("%s", line)
            return
        left_out = "" if not self._left_out else (
            f" ({plural(self._left_out, f'other {self.event}')} in the last {now_s - self._last_warning_s:.0f} s "
            "went to the DEBUG log)")
        self.log.warning("%s%s", line, left_out)
        self._last_warning_s = now_s
        self._left_out = 0


_HEADER_TIMEOUT_WARNINGS = RateLimitedWarnings("header timeout", logger)

#: Maximum length of a request path in the log, in characters; paths may be kilobytes long.
_MAX_LOGGED_PATH_CHARS = 200


def loggable_path(path: str) -> str:
    """Return a request path fit for one log line: control characters escaped, long paths cut.

    uvicorn decodes percent-escapes in the path, so ``%0A`` arrives as a newline that would
    otherwise start a forged log record.
    """
    escaped = "".join(char if char.isprintable() else repr(char)[1:-1] for char in path)
    if len(escaped) <= _MAX_LOGGED_PATH_CHARS:
        return escaped
    return f"{escaped[:_MAX_LOGGED_PATH_CHARS]}... ({len(path)} characters)"


class _HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers take too long."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    #: Called with ``"partial_headers"`` or ``"silent"`` each time the deadline closes a connection.
    on_timeout: Callable[[str], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._first_request_started = False
        self._deadline_since = "the connection's opening"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers(since="the connection's opening")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers(since="its first byte")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._partial_headers():
            # A pipelined request sent part of its headers while the last one was served. Its
            # deadline replaces the keep-alive timer, which would close the connection without a word.
            self._unset_keepalive_if_required()
        self._watch_headers(since="the previous response")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _partial_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _watch_headers(self, since: str) -> None:
        """Run the deadline while the connection waits for request headers, and stop it otherwise.

        ``since`` names the event that starts a new deadline, for the 408's detail. A kept-alive
        connection with nothing received is left to uvicorn's keep-alive timer.
        """
        if self.conn.their_state is not h11.IDLE:
            self._first_request_started = True
        waiting = self._partial_headers() or (not self._first_request_started and self.conn.their_state is h11.IDLE)
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._deadline_since = since
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        received_bytes = len(self.conn.trailing_data[0])
        client = "%s:%d" % self.client if self.client else "a client"
        if received_bytes == 0:
            # A connection that never sent a byte gets no response, because there is no request to respond to.
            self.transport.close()
            _HEADER_TIMEOUT_WARNINGS.record(f"{client}: sent nothing for {self.header_timeout_s:g} s; connection closed")
            self._report("silent")
            return
        detail = (f"the request line and headers did not arrive within {self.header_timeout_s:g} s of {self._deadline_since} "
                  f"({received_bytes} bytes received)")
        body = json.dumps({"error": "header_timeout", "detail": detail,
                           "fix": "send the request line and all headers without pausing"}).encode()
        # h11 cannot send a response before it has parsed a request, so the bytes are written
        # directly, and the connection is closed right after them.
        head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n" % len(body))
        self.transport.write(head + body)
        self.transport.close()
        _HEADER_TIMEOUT_WARNINGS.record(f"{client}: {detail}; connection closed with 408")
        self._report("partial_headers")

    def _report(self, kind: str) -> None:
        # Read through the class, because a plain function read through self would be bound as a method.
        on_timeout = type(self).on_timeout
        if on_timeout is not None:
            on_timeout(kind)


def header_timeout_protocol(
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, on_timeout: Callable[[str], None] | None = None
) -> type[H11Protocol]:
    """Return uvicorn's HTTP/1.1 protocol class with a ``header_timeout_s`` deadline for request headers.

    Pass it to ``uvicorn.Config(http=...)``. ``on_timeout``, if given, is called on the event
    loop with ``"partial_headers"`` (answered with 408) or ``"silent"`` (closed without a
    response) for every connection the deadline closes.
    """
    attributes = {"header_timeout_s": header_timeout_s, "on_timeout": on_timeout}
    return type("HeaderTimeoutH11Protocol", (_HeaderTimeoutProtocol,), attributes)
