"""Free loopback ports, TCP reachability probes and readiness waits for the embedded servers."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A port the OS says is free right now (a tiny race remains; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_open(server: str, timeout_s: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``server`` ("host:port", "[v6]:port")
    within ``timeout_s``; False also for a malformed address."""
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def any_tcp_open(servers: str, timeout_s: float = 0.5) -> bool:
    """Whether one of the comma-separated ``servers`` (a Kafka bootstrap list) accepts a connection."""
    return any(tcp_open(server, timeout_s) for server in servers.split(",") if server.strip())


def wait_tcp(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tcp_open(f"{host}:{port}", 0.5):
            return True
        time.sleep(0.05)
    return False
