"""HTTP requests sent as raw bytes: bodies and headers no client library would send."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from urllib.parse import urlsplit


def raw_status(url: str, request: bytes | Iterable[bytes], timeout: float = 30) -> int:
    """Send ``request`` (bytes, or pieces sent one by one) as it is to ``url``'s host and port and
    return the reply's status code. A server that answers and closes before the last piece is
    heard out: its reply is read all the same."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        try:
            for piece in [request] if isinstance(request, bytes) else request:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while b"\r\n" not in reply:
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    return int(reply.split(b" ", 2)[1])
