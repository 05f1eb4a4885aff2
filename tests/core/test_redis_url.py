"""Redis URLs in one place (core/infra/redis_url.py): redis://, rediss://, unix:// through
redis-py, and redis+sentinel://.

No Redis Sentinel runs on this machine, so the Sentinel tests check the parsing, the client's
wiring (which hosts it will ask, for which master, with which credentials) and that an
unreachable Sentinel gives a clear error; the plain-URL path is tested against the real Redis."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.infra.broker import InfraError
from core.infra.ports import free_port
from core.infra.redis_server import check_redis, redis_answers
from core.infra.redis_url import SentinelURL, parse_sentinel_url, redact, redis_from_url
from core.settings import CommonSettings


def test_sentinel_url_parsing_without_a_real_sentinel():
    url = "redis+sentinel://app:p%40ss@sentinel-0:26379,sentinel-1,[fd00::1]:26380/rlhb-master/2?ssl=true"
    target = parse_sentinel_url(url)
    assert target == SentinelURL(
        sentinels=(("sentinel-0", 26379), ("sentinel-1", 26379), ("fd00::1", 26380)),
        master="rlhb-master",
        db=2,
        username="app",
        password="p@ss",
        ssl=True,
    )
    assert "p@ss" not in repr(target)
    minimal = parse_sentinel_url("redis+sentinel://s1:5000/mymaster")
    assert minimal.sentinels == (("s1", 5000),) and minimal.db == 0 and minimal.password is None
    with_sentinel_auth = parse_sentinel_url("redis+sentinel://:pw@s1/m?sentinel_password=spw&sentinel_ssl=1")
    assert (with_sentinel_auth.password, with_sentinel_auth.sentinel_password) == ("pw", "spw")
    assert with_sentinel_auth.sentinel_ssl and with_sentinel_auth.username is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///mymaster", "names no Sentinel host"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/", "names no master"),
        ("redis+sentinel://s1:port/m", "'s1:port' is not host"),
        ("redis+sentinel://s1/m/zero", "/<master>\\[/<db number>\\]"),
        ("redis+sentinel://s1/m?retry=3", "unknown option\\(s\\) retry"),
        ("redis+sentinel://s1/m?ssl=maybe", "ssl='maybe': use true or false"),
        ("redis+sentinel://user@s1/m", "user:password@ or :password@"),
    ],
)
def test_malformed_sentinel_urls_say_the_expected_shape_without_a_real_sentinel(url, message):
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)
    # The settings parse it at start, so a deployment fails before it serves anything.
    with pytest.raises(ValidationError, match=message):
        CommonSettings(RLHB_REDIS_URL=url)


def test_settings_accept_sentinel_urls_and_still_refuse_other_schemes():
    url = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0"
    assert CommonSettings(RLHB_REDIS_URL=url).redis_url == url
    with pytest.raises(ValidationError, match="redis\\+sentinel://"):
        CommonSettings(RLHB_REDIS_URL="sentinel://s1/m")


def test_secret_errors_do_not_echo_the_password():
    with pytest.raises(ValidationError) as err:
        CommonSettings(RLHB_REDIS_URL="redis+sentinel://:hunter2hunter2@s1:port/m")
    assert "hunter2" not in str(err.value)
    assert redact("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis+sentinel://u:hunter2@a,b/m?sentinel_password=x2&ssl=1") == (
        "redis+sentinel://u:***@a,b/m?sentinel_password=***&ssl=1"
    )
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_sentinel_client_wiring_without_a_real_sentinel():
    """The client built for a Sentinel URL asks those Sentinels for that master, authenticates
    to the master with the URL's credentials and gives the Sentinels the caller's timeouts."""
    client = redis_from_url(
        "redis+sentinel://app:pw@s1:26379,s2:26380/rlhb/3?sentinel_password=spw",
        decode_responses=True,
        socket_timeout=1.5,
    )
    pool = client.connection_pool
    assert pool.service_name == "rlhb"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"], kwargs["decode_responses"]) == (3, "app", "pw", True)
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ] == [
        ("s1", 26379),
        ("s2", 26380),
    ]
    assert all(s.connection_pool.connection_kwargs["password"] == "spw" for s in sentinels)
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 1.5 for s in sentinels)


def test_unreachable_sentinel_is_a_clear_error_without_a_real_sentinel():
    url = f"redis+sentinel://:hunter2@127.0.0.1:{free_port()}/mymaster"
    assert not redis_answers(url, timeout_s=0.5)
    with pytest.raises(InfraError, match="Redis does not answer") as err:
        check_redis(url)
    assert "hunter2" not in str(err.value) and ":***@" in str(err.value)


def test_plain_urls_go_through_the_same_function_to_the_real_redis(redis_url, redis_prefix):
    client = redis_from_url(redis_url, decode_responses=True)
    client.set(f"{redis_prefix}k", "v")
    assert client.get(f"{redis_prefix}k") == "v"
    client.close()
    assert redis_answers(redis_url)


# ---------------------------------------------------------------- bounded pools (issue 16)
# redis-py's default pool is unbounded and keeps every connection it opened: a long-lived process
# ends up holding as many sockets as its busiest moment needed. With max_connections the pool is a
# blocking one: commands wait for a connection to come back instead of opening more.


@pytest.fixture
def private_redis():
    from core.infra.redis_server import EmbeddedRedis

    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_url(private_redis, tmp_path):
    """A real Sentinel (the embedded valkey binary in sentinel mode) watching ``private_redis``."""
    import subprocess
    import time

    from core.infra.redis_server import server_binary

    port = free_port()
    conf = tmp_path / "sentinel.conf"  # sentinel rewrites its config: a file of its own
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor rlhb 127.0.0.1 {private_redis.port} 1\n")
    proc = subprocess.Popen(
        [str(server_binary()), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis+sentinel://127.0.0.1:{port}/rlhb"
    try:
        deadline = time.monotonic() + 20
        while not redis_answers(url, timeout_s=0.5):
            assert proc.poll() is None and time.monotonic() < deadline, "the Sentinel did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _named_connections(watch, name: str) -> int:
    return sum(1 for c in watch.client_list() if c["name"] == name)


@pytest.mark.parametrize("kind", ["plain", "sentinel"])
def test_a_bounded_client_never_opens_more_than_its_bound_and_makes_the_rest_wait(kind, private_redis, request):
    import threading
    import time
    import uuid

    import redis

    url = private_redis.url if kind == "plain" else request.getfixturevalue("sentinel_url")
    name = f"rlhbtest-pool-{uuid.uuid4().hex[:8]}"  # CLIENT SETNAME: count this client's sockets on the server
    client = redis_from_url(url, max_connections=2, pool_timeout_s=10, client_name=name, decode_responses=True)
    watch = redis.Redis.from_url(private_redis.url, decode_responses=True)
    errors: list[Exception] = []

    def hold() -> None:
        try:  # BLPOP on an empty key keeps its connection busy for 0.3 s
            client.blpop(f"empty-{uuid.uuid4().hex}", timeout=0.3)
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=hold) for _ in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, _named_connections(watch, name))
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    try:
        assert errors == []  # an unbounded pool opens 6; a non-blocking bounded one raises "Too many connections"
        assert peak == 2 and _named_connections(watch, name) == 2
        assert elapsed >= 3 * 0.3 - 0.05  # 6 holds through 2 connections: three rounds, one after another
    finally:
        client.close()
        watch.close()


def test_a_bounded_client_gives_up_after_the_pool_timeout(private_redis):
    import threading
    import time

    import redis

    client = redis_from_url(private_redis.url, max_connections=1, pool_timeout_s=0.2)
    holder = threading.Thread(target=client.blpop, args=("nothing-here",), kwargs={"timeout": 1.5})
    holder.start()
    time.sleep(0.2)  # the only connection is now inside BLPOP
    started = time.monotonic()
    try:
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            client.ping()
        assert time.monotonic() - started < 1.0  # the pool's timeout, not the holder's 1.5 s
    finally:
        holder.join(5)
        client.close()
    with pytest.raises(ValueError, match="at least 1"):
        redis_from_url(private_redis.url, max_connections=0)
