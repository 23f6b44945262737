"""Bounds on time and size: a deadline for one whole response, the whole crawl's time limit, and a
cap on the (decompressed) bytes of one response.

Why a signal for the deadline: `requests`' timeout bounds each socket read, not the answer, so a
server that sends a byte a second never trips it. `deadline()` arms SIGALRM for the whole
exchange (connect, headers, body) and raises `DeadlineExceeded` wherever the code is waiting. It is
a BaseException, like KeyboardInterrupt, so no library's `except Exception` swallows it, and the
libraries already clean up after such an exception at any point. Outside the main thread signals
are not available; there only the per-read timeout applies.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import requests

CHUNK_BYTES = 64 * 1024


class DeadlineExceeded(BaseException):
    """The response did not arrive in full before its deadline."""


class TimeLimitReached(RuntimeError):
    """The whole crawl ran out of time (`--time-limit`)."""


class TooLarge(RuntimeError):
    """The response is larger than the cap."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise DeadlineExceeded in this (main) thread if the block runs longer than `seconds`
    (at once when `seconds` <= 0; never when it is infinite)."""
    if seconds <= 0:
        raise DeadlineExceeded("no time left")
    if not math.isfinite(seconds) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise DeadlineExceeded(f"no complete answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    """The crawl's time limit: how much is left, and sleeps that never overrun it."""

    def __init__(self, limit: float):
        self.limit = limit if limit and limit > 0 else math.inf
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.limit - self.elapsed()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.reached()

    def reached(self) -> TimeLimitReached:
        return TimeLimitReached(f"the crawl reached its time limit of {self.limit:g} s (--time-limit)")

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or until the limit and then raise TimeLimitReached."""
        if seconds <= 0:
            return
        left = self.remaining()
        if seconds < left:
            time.sleep(seconds)
            return
        time.sleep(max(0.0, left))
        raise self.reached()


def read_capped(response: requests.Response, max_bytes: int) -> bytes:
    """The body of a streamed response, decompressed, refused (TooLarge) as soon as it passes
    `max_bytes`: the decoder hands out at most one chunk at a time, so neither a huge body nor a
    compression bomb is ever held in memory. The body is also stored on the response (as
    `requests` would after reading it), so the cache can save it."""
    declared = response.headers.get("Content-Length", "")
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if max_bytes and declared.isdigit() and not encoded and int(declared) > max_bytes:
        raise TooLarge(f"{int(declared):,} bytes announced, more than the {max_bytes:,} allowed")
    chunks, size = [], 0
    for chunk in response.iter_content(CHUNK_BYTES):
        size += len(chunk)
        if max_bytes and size > max_bytes:
            raise TooLarge(f"more than the {max_bytes:,} bytes allowed"
                           + (" after decompression" if encoded else ""))
        chunks.append(chunk)
    body = b"".join(chunks)
    response._content = body  # what `response.content` returns from now on
    response._content_consumed = True
    return body
