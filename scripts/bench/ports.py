"""A free loopback port for the HTTP servers the benches start on this machine.

One helper for every bench: each binds what it starts to 127.0.0.1, so a
loopback probe is the right one (`scripts.up_ingress.free_port` probes every
interface, because HAProxy binds its stats and metrics ports on all of them).
"""

from __future__ import annotations

import socket


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon after; another process could take it between)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
