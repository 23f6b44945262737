"""Hostile variants of the stand-in PressClub, for the tests of stage 01's bounds.

`HostileServer` is `StandinServer` with `rules`: request target ("/rss2?page=2", "/global/rss2" for
page 1 only) or "*" (everything) -> a behaviour that answers instead of the stand-in. Behaviours:

- `never_answer`          hold the connection open and send nothing;
- `trickle(s)`            the normal answer, status line included, one byte every `s` seconds;
- `redirect(url)`         302 to `url` (on another host, or on the same site);
- `gzip_bomb(n)`          a small gzip body that inflates to `n` zero bytes;
- `huge(n, chunked)`      `n` bytes of a valid-looking body, announced or chunked;
- `corrupt(patch)`        the normal answer with its body bytes passed through `patch`.

Whatever a behaviour does, it lets go after `give_up_after` seconds (default 20), so a test whose
client fails to bound its own time still ends, and fails on its time assertion.

`SilentListener` is a port that accepts connections (the kernel completes the handshake) and never
answers: a server that has hung.
"""
from __future__ import annotations

import gzip
import socket
import threading
import time
from typing import Callable

from standin_server import StandinServer

Behaviour = Callable[[StandinServer, object, str], None]


class HostileServer(StandinServer):
    def __init__(self, articles: list[dict], *, rules: dict[str, Behaviour] | None = None,
                 give_up_after: float = 20.0, **kwargs):
        super().__init__(articles, **kwargs)
        self.rules = dict(rules or {})
        self._give_up = threading.Timer(give_up_after, self.stopping.set)
        self._give_up.daemon = True

    def start(self) -> "HostileServer":
        self._give_up.start()
        return super().start()

    def stop(self) -> None:
        self._give_up.cancel()
        super().stop()

    def intercept(self, handler, target: str, path: str) -> bool:
        rule = self.rules.get(target) or self.rules.get("*")
        if rule is None:
            return False
        rule(self, handler, target)
        handler.close_connection = True  # the rule may have written a raw answer: no keep-alive
        return True


def _head(status: int, ctype: str, headers: dict) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Hostile'}", f"Content-Type: {ctype}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def never_answer(server: StandinServer, handler, target: str) -> None:
    server.stopping.wait()


def trickle(seconds_per_byte: float) -> Behaviour:
    def behaviour(server: StandinServer, handler, target: str) -> None:
        status, body, ctype, headers = server.answer(target, handler.headers)
        data = body.encode("utf-8")
        raw = _head(status, ctype, {**headers, "Content-Length": len(data)}) + data
        for i in range(len(raw)):
            if server.stopping.is_set():
                return
            handler.wfile.write(raw[i:i + 1])
            time.sleep(seconds_per_byte)
    return behaviour


def redirect(location: str, status: int = 302) -> Behaviour:
    def behaviour(server: StandinServer, handler, target: str) -> None:
        handler.send(status, "", "text/html; charset=utf-8", {"Location": location})
    return behaviour


def gzip_bomb(inflated_bytes: int) -> Behaviour:
    """A multi-member gzip body: one member of 10 MB of zeros (about 10 kB), repeated."""
    member = gzip.compress(b"\0" * 10_000_000, compresslevel=9)
    body = member * max(1, inflated_bytes // 10_000_000)

    def behaviour(server: StandinServer, handler, target: str) -> None:
        handler.wfile.write(_head(200, "application/rss+xml; charset=utf-8",
                                  {"Content-Encoding": "gzip", "Content-Length": len(body)}))
        handler.wfile.write(body)
    return behaviour


def huge(n_bytes: int, *, chunked: bool = False) -> Behaviour:
    def behaviour(server: StandinServer, handler, target: str) -> None:
        block = b"<p>" + b"x" * 65_529 + b"</p>"  # 64 KiB
        headers = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": n_bytes}
        try:
            handler.wfile.write(_head(200, "application/rss+xml; charset=utf-8", headers))
            sent = 0
            while sent < n_bytes and not server.stopping.is_set():
                piece = block[: n_bytes - sent]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what we want
    return behaviour


def corrupt(patch: Callable[[bytes], bytes]) -> Behaviour:
    def behaviour(server: StandinServer, handler, target: str) -> None:
        status, body, ctype, headers = server.answer(target, handler.headers)
        handler.send(status, patch(body.encode("utf-8")), ctype, headers)
    return behaviour


class SilentListener:
    """A port on 127.0.0.1 that accepts connections and never answers."""

    def __enter__(self) -> "SilentListener":
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return self

    @property
    def base_url(self) -> str:
        return "http://%s:%d" % self.sock.getsockname()

    def __exit__(self, *exc) -> None:
        self.sock.close()
