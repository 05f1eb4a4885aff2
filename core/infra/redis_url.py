"""The one place a Redis URL becomes a client: plain, TLS, Unix socket, Redis Sentinel or Cluster.

Every process passes Redis around as one URL string (``RLHB_REDIS_URL``, ``Infra.redis_url``,
the environment of child processes), so a Sentinel deployment is one URL too, and callers
build clients with ``redis_from_url(url, **kwargs)`` instead of ``redis.Redis.from_url``:

    redis://[[user]:password@]host:6379/0            plain TCP (redis-py's own parser)
    rediss://...                                     TLS (``?ssl_ca_certs=/path/ca.pem`` for a private CA)
    unix:///run/redis.sock?db=0                      Unix socket
    redis+sentinel://[[user]:password@]s1:26379,s2:26379/<master>[/<db>][?options]

Sentinel options (query string): ``ssl=true`` (TLS to the master and replicas), ``ssl_ca_certs=PATH``,
``sentinel_password=...`` (when the Sentinels themselves require AUTH; default: none),
``sentinel_ssl=true`` (TLS to the Sentinels). The user and password in the URL authenticate
to the master, like in a redis:// URL. A port left out is Sentinel's 26379. Percent-encode
special characters of a password (``urllib.parse.quote(password, safe="")``).

    redis+cluster://[[user]:password@]n1:6379,n2:6379[/0][?options]    Redis Cluster
    rediss+cluster://...                             Redis Cluster over TLS

Cluster, the "one slot" way: the nodes listed are only where the client starts (it learns
the rest of the cluster from them). Every key of a deployment must hash to one slot, so
``RLHB_REDIS_PREFIX`` must carry a hash tag (``{rlhb}:``; core.settings checks it): the
aggregator's Lua scripts and the registry's transaction touch several keys at once, which
Cluster allows only within one slot. Not sharded: one primary holds all keys (its replicas
take over on failover). A port left out is 6379; a path, if any, must be ``/0`` (Cluster
has no other database). Option: ``ssl_ca_certs=PATH`` (with ``rediss+cluster://``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_DEFAULT_PORT = 26379
SENTINEL_SHAPE = "redis+sentinel://[[user]:password@]host:26379[,host:26379...]/<master name>[/<db>][?ssl=true]"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SENTINEL_OPTIONS = {"ssl", "ssl_ca_certs", "sentinel_password", "sentinel_ssl"}
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
CLUSTER_DEFAULT_PORT = 6379
CLUSTER_SHAPE = "redis+cluster://[[user]:password@]host:6379[,host:6379...][/0] (rediss+cluster:// for TLS)"
_CLUSTER_OPTIONS = {"ssl_ca_certs"}


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL. Passwords are kept out of ``repr`` (logs, tracebacks)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_ca_certs: str | None = None
    sentinel_ssl: bool = False


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL. The password is kept out of ``repr`` (logs, tracebacks)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_ca_certs: str | None = None


_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s/@]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:sentinel_password|password|passwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, or a log line quoting any number of them) with the passwords of their
    userinfo and secret query parameters (``sentinel_password``, ``password``, ``token``...)
    replaced by ``***``: the one redaction for error messages and logs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SENTINEL_SCHEME)


def is_cluster_url(url: str) -> bool:
    return url.strip().lower().startswith(CLUSTER_SCHEMES)


def _split_userinfo(netloc: str, kind: str, shape: str) -> tuple[str | None, str | None, str]:
    """(username, password, hosts) of ``[[user]:password@]hosts``."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # "user@" alone would be a password in redis:// terms; be explicit instead
            raise ValueError(f"{kind} URL: write the credentials as user:password@ or :password@; expected {shape}")
    return username, password, hosts


def _host_ports(hosts: str, default_port: int, kind: str, shape: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # IPv6: [addr]:port
            host, _, tail = part[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else (tail or str(default_port))
        else:
            host, colon, port = part.partition(":")
            port = port if colon else str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{kind} URL: {part!r} is not host[:port]; expected {shape}")
        out.append((host, int(port)))
    return out


def cluster_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` (``RLHB_REDIS_PREFIX``) cannot be used with Redis Cluster, or None.

    Redis hashes only the part of a key inside its first ``{...}`` (when not empty), so a prefix
    that starts with ``{tag}`` puts every key of the deployment in one slot."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return None
    suggestion = "{" + (prefix.strip("{}:") or "rlhb") + "}:"
    return (
        f"RLHB_REDIS_PREFIX={prefix!r} has no hash tag, which Redis Cluster (RLHB_REDIS_URL=redis+cluster://...) "
        "needs: the aggregator's Lua scripts and the registry's transaction touch several keys at once, and "
        "Cluster allows that only when all of them hash to one slot. Put a non-empty {tag} in the prefix, "
        f"e.g. RLHB_REDIS_PREFIX={suggestion!r} (only the part inside the braces is hashed, so every key "
        "of this deployment lands in one slot). Changing the prefix starts from empty state: migrate or "
        "replay the old keys (docs/production.md, Redis Cluster)"
    )


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://...`` / ``rediss+cluster://...``; a ValueError says what is wrong
    and the expected shape. Messages never quote the password."""
    text = url.strip()
    if not is_cluster_url(text):
        raise ValueError(f"not a Cluster URL; expected {CLUSTER_SHAPE}")
    scheme, _, rest = text.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username, password, hosts = _split_userinfo(netloc, "Cluster", CLUSTER_SHAPE)
    nodes = _host_ports(hosts, CLUSTER_DEFAULT_PORT, "Cluster", CLUSTER_SHAPE)
    if not nodes:
        raise ValueError(f"Cluster URL names no node; expected {CLUSTER_SHAPE}")
    if path.strip("/") not in ("", "0"):
        raise ValueError(
            f"Cluster URL path must be empty or /0 (Redis Cluster has only database 0); expected {CLUSTER_SHAPE}"
        )
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - _CLUSTER_OPTIONS)
    if unknown:
        raise ValueError(
            f"Cluster URL: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_CLUSTER_OPTIONS))}"
        )
    ssl = scheme.lower() == "rediss+cluster"
    if "ssl_ca_certs" in options and not ssl:
        raise ValueError(f"Cluster URL: ssl_ca_certs needs TLS, i.e. rediss+cluster://; expected {CLUSTER_SHAPE}")
    return ClusterURL(
        nodes=tuple(nodes),
        username=username,
        password=password,
        ssl=ssl,
        ssl_ca_certs=options["ssl_ca_certs"][-1] if "ssl_ca_certs" in options else None,
    )


def _bool_option(name: str, values: list[str]) -> bool:
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"Sentinel URL option {name}={values[-1]!r}: use true or false")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://...``; a ValueError says what is wrong and the expected shape.
    Messages never quote the password."""
    text = url.strip()
    if not is_sentinel_url(text):
        raise ValueError(f"not a Sentinel URL; expected {SENTINEL_SHAPE}")
    rest = text[len(SENTINEL_SCHEME) :]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username, password, hosts = _split_userinfo(netloc, "Sentinel", SENTINEL_SHAPE)
    sentinels = _host_ports(hosts, SENTINEL_DEFAULT_PORT, "Sentinel", SENTINEL_SHAPE)
    if not sentinels:
        raise ValueError(f"Sentinel URL names no Sentinel host; expected {SENTINEL_SHAPE}")

    segments = [unquote(s) for s in path.split("/") if s]
    if not segments:
        raise ValueError(f"Sentinel URL names no master (the name Sentinels monitor); expected {SENTINEL_SHAPE}")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError(f"Sentinel URL path must be /<master>[/<db number>]; expected {SENTINEL_SHAPE}")
    master, db = segments[0], int(segments[1]) if len(segments) == 2 else 0

    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - _SENTINEL_OPTIONS)
    if unknown:
        raise ValueError(
            f"Sentinel URL: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_SENTINEL_OPTIONS))}"
        )
    return SentinelURL(
        sentinels=tuple(sentinels),
        master=master,
        db=db,
        username=username,
        password=password,
        sentinel_password=options["sentinel_password"][-1] if "sentinel_password" in options else None,
        ssl=_bool_option("ssl", options["ssl"]) if "ssl" in options else False,
        ssl_ca_certs=options["ssl_ca_certs"][-1] if "ssl_ca_certs" in options else None,
        sentinel_ssl=_bool_option("sentinel_ssl", options["sentinel_ssl"]) if "sentinel_ssl" in options else False,
    )


def _blocking_sentinel_pool_class():
    """A Sentinel-managed pool that blocks at its bound like ``redis.BlockingConnectionPool``
    (redis-py ships only the non-blocking one, which raises "Too many connections" instead).
    The MRO puts Sentinel's master lookup in front of the blocking queue of connections."""
    import redis
    from redis.sentinel import SentinelConnectionPool

    class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
        pass

    return BlockingSentinelConnectionPool


def redis_from_url(url: str, *, max_connections: int | None = None, pool_timeout_s: float = 5.0, **kwargs: Any):
    """A ``redis.Redis`` client for any URL above (a ``redis.cluster.RedisCluster`` for a
    Cluster URL); ``kwargs`` as for ``redis.Redis.from_url`` (``decode_responses``,
    ``socket_timeout``...). For Sentinel the client asks the Sentinels for the current master
    on each new connection, so it follows a failover by itself; a Cluster client follows the
    cluster's slot map (MOVED) the same way.

    ``max_connections``: bound the client's connection pool. redis-py's default pool is
    unbounded and keeps every socket it ever opened, so a long-lived process holds as many
    connections as its highest concurrency so far (issue 16: the API's open fds crept up in
    steps through a soak). Bounded, the pool is a blocking one: at the bound a command waits
    up to ``pool_timeout_s`` for a connection to come back (then ``redis.ConnectionError``
    "No connection available.") instead of opening another socket. None (probes, CLIs, one
    thread): redis-py's default. For Cluster the bound is per node."""
    import redis

    pool_kwargs: dict[str, Any] = {}
    if max_connections is not None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        pool_kwargs = {"max_connections": max_connections, "timeout": pool_timeout_s}

    if is_cluster_url(url):
        return _cluster_from_url(url, pool_kwargs, kwargs)
    if not is_sentinel_url(url):
        if not pool_kwargs:
            return redis.Redis.from_url(url, **kwargs)
        # from_pool: the client owns the pool and closes its sockets with it.
        return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **pool_kwargs, **kwargs))

    from redis.sentinel import Sentinel, SentinelManagedSSLConnection

    target = parse_sentinel_url(url)
    # Sentinels get the socket timeouts of the caller (so a probe with a 1 s timeout stays short)
    # and their own auth/TLS; the master gets everything else.
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.sentinel_ssl:
        sentinel_kwargs["ssl"] = True
        if target.ssl_ca_certs:
            sentinel_kwargs["ssl_ca_certs"] = target.ssl_ca_certs
    master_kwargs: dict[str, Any] = dict(kwargs, db=target.db)
    if target.username:
        master_kwargs["username"] = target.username
    if target.password:
        master_kwargs["password"] = target.password
    if target.ssl:
        master_kwargs["connection_class"] = SentinelManagedSSLConnection
        if target.ssl_ca_certs:
            master_kwargs["ssl_ca_certs"] = target.ssl_ca_certs
    if pool_kwargs:
        master_kwargs.update(pool_kwargs, connection_pool_class=_blocking_sentinel_pool_class())
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.master, redis_class=redis.Redis, **master_kwargs)


def _cluster_from_url(url: str, pool_kwargs: dict[str, Any], kwargs: dict[str, Any]):
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    target = parse_cluster_url(url)
    node_kwargs: dict[str, Any] = dict(kwargs)
    if target.username:
        node_kwargs["username"] = target.username
    if target.password:
        node_kwargs["password"] = target.password
    if target.ssl:
        node_kwargs["ssl"] = True
        if target.ssl_ca_certs:
            node_kwargs["ssl_ca_certs"] = target.ssl_ca_certs
    if pool_kwargs:  # one bounded, blocking pool per node
        node_kwargs.update(pool_kwargs, connection_pool_class=redis.BlockingConnectionPool)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], **node_kwargs)
