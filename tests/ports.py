"""Loopback ports the tests make themselves, never ports they assume.

`REFUSING_URL` is a loopback address that refuses every connection at once, for as long as the
test process lives: its socket is bound (so no other process can take the port) and never
listens (so the kernel answers each connect with a reset). Assuming a port is closed (the
discard port 9, or a port picked, released and named later) fails the day something listens
there; this one cannot be listened on by anyone else while we hold it.
"""

from __future__ import annotations

import socket

__all__ = ["REFUSING_PORT", "REFUSING_URL", "refusing_socket"]


def refusing_socket() -> socket.socket:
    """A loopback TCP socket bound to a port the OS picks and never listening: keep it open
    for as long as connections to its port must be refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


_HELD = refusing_socket()  # held until the test process ends
REFUSING_PORT: int = _HELD.getsockname()[1]
REFUSING_URL = f"http://127.0.0.1:{REFUSING_PORT}"
