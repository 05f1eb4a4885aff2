"""The embedded Redis of `rlhb up` keeps an append-only file in the data folder and reloads it
(core/infra/redis_server.py); without a data folder it keeps nothing, as before."""

from __future__ import annotations

from pathlib import Path

import redis as redis_lib

from core.infra.redis_server import EmbeddedRedis, resolve_redis_url


def test_a_restart_on_the_same_data_folder_keeps_every_key(tmp_path):
    data = tmp_path / "state" / "redis"
    url, server = resolve_redis_url("", data_dir=data)  # not the machine's Redis: one of its own
    assert server is not None and server.data_dir == data
    try:
        client = redis_lib.Redis.from_url(url, decode_responses=True)
        client.hset("agg:cnt:i1", mapping={"like": 2})
        client.set("adapter:active", "v-kept")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.stop()  # SIGTERM: the server fsyncs the file before exiting
    assert any(data.rglob("*.aof")) and data.exists()
    again = EmbeddedRedis(data_dir=data).start()
    try:
        client = redis_lib.Redis.from_url(again.url, decode_responses=True)
        assert client.hgetall("agg:cnt:i1") == {"like": "2"} and client.get("adapter:active") == "v-kept"
        client.close()
    finally:
        again.stop()


def test_without_a_data_folder_nothing_is_kept(tmp_path):
    server = EmbeddedRedis().start()
    folder = server._dir
    try:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()
    finally:
        server.stop()
    assert folder and not Path(folder).exists()  # its temporary folder is removed
