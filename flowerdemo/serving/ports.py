"""Ports on this machine: whether one is taken, and blocks of free ones for stacks started beside
others (tests, benchmarks, several engineers' stacks on one machine)."""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time

PORT_RANGE = (20000, 32000)
"""Free blocks are chosen here: below Linux's ephemeral range (32768 and up), so outgoing
connections do not take a port between the moment it is chosen and the moment it is bound."""

_chooser = random.Random(os.getpid() ^ time.time_ns())  # noqa: S311 (spreads ports, no secret)
_handed_out: set[int] = set()
_lock = threading.Lock()


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (a socket in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port_block(span: int, host: str = "127.0.0.1") -> int:
    """The first of `span` consecutive ports on `host` that are free now and not yet handed out
    by this process (a server binds its ports only once it has started)."""
    low, high = PORT_RANGE
    with _lock:
        for _ in range(500):
            first = _chooser.randrange(low, high - span)
            ports = range(first, first + span)
            if _handed_out.intersection(ports):
                continue
            if any(port_in_use(host, port) for port in ports):
                continue
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {span} consecutive free ports on {host} in {low}-{high}")
