"""Issue 15 items 6 and 8 on the real embedded default: `rlhb up` with no broker, no Redis and
no secrets configured (its own tansu broker and its own valkey), stopped and started again on
the same data folder.

First run: an admin token and an impression key are generated (0600 files in the data folder,
the token printed once at start); /admin without the token is 401. Two answers get feedback,
their behavior records reach the trainer, a version is registered and promoted. SIGTERM.

Second run (the broker's topics are gone: tansu keeps them in memory): the counts, the
trainer's records, the registry and the active version are all there; the same token and key
are reused, so an id signed before the restart still takes feedback, counted exactly once, and
a like already counted before the restart is still a duplicate; an id signed with the old public
dev constant is refused.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from core.dev_secrets import ADMIN_TOKEN_FILE, IMPRESSION_SECRET_FILE
from core.impression_ids import ImpressionIds as ImpressionSigner
from core.infra.ports import free_port
from core.registry import Registry
from service.aggregator.redis_state import AggregatorStore
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.e2e import deployment_env
from tests.helpers.trainer_loop import trainer_env, wait_for
from tests.rlhb.test_supervisor import Feedback
from trainer.loop import read_status
from trainer.record_store import FILE_NAME as RECORDS_FILE

PREFIX = "restart-test:"
TOPICS = {"records": "behavior-records", "impressions": "impressions", "feedback": "feedback"}
TOPICS["dead_letter"] = "dead-letter"
EMBEDDED_DEFAULT_UNSET = ("RLHB_KAFKA_BOOTSTRAP_SERVERS", "RLHB_REDIS_URL", "RLHB_API_ADMIN_TOKEN",
                          "RLHB_API_IMPRESSION_SECRET", "RLHB_DEV_MODE")  # fmt: skip


class Up:
    """One `rlhb up` on ``state``; its output appended to ``log``."""

    def __init__(self, env: dict, port: int, log: Path):
        self.log, self.url = log, f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "rlhb.cli", "up", "--port", str(port), "--backoff", "0.5", "--grace", "20"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def ready(self, http: httpx.Client) -> bool:
        assert self.proc.poll() is None, self.logs()
        try:
            return http.get("/readyz", timeout=5).json().get("status") == "ready"
        except (httpx.HTTPError, ValueError):
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _redis(state: Path) -> redis_lib.Redis:
    """The deployment's own Redis, from the state file `rlhb up` writes."""
    return redis_lib.Redis.from_url(json.loads((state / "infra.json").read_text())["redis_url"], decode_responses=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rlhb_up_restarted_on_its_data_folder_forgets_nothing_and_keeps_its_secrets(tmp_path, tiny_model_dir):
    state, adapters, log = tmp_path / "state", tmp_path / "adapters", tmp_path / "up.log"
    port = free_port()
    env = deployment_env(
        trainer_env(
            bootstrap="", redis_url="", prefix=PREFIX, topics=TOPICS, adapter_dir=adapters, state_dir=state,
            model_dir=tiny_model_dir, records_per_round=10_000,  # no round: the test is about what is kept
        ),
        port=port, prefix=PREFIX,
    )  # fmt: skip
    for name in EMBEDDED_DEFAULT_UNSET:
        env.pop(name, None)
    fb = Feedback(f"http://127.0.0.1:{port}")
    up = Up(env, port, log)
    try:
        # ---------------------------------------------------------------- first run
        wait_for(lambda: up.ready(fb.http), 240, "the API behind the first `rlhb up`", interval=0.5)
        token_file, key_file = state / ADMIN_TOKEN_FILE, state / IMPRESSION_SECRET_FILE
        assert _mode(token_file) == 0o600 and _mode(key_file) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and log.read_text().count(token) == 1  # printed once, at start
        auth = {"Authorization": f"Bearer {token}"}
        assert fb.http.get("/admin/checkpoints").status_code == 401  # not open: dev mode is off
        assert fb.http.get("/admin/checkpoints", headers=auth).status_code == 200

        r1 = _redis(state)
        store = AggregatorStore(r1, PREFIX)
        iids = [fb.query(f"What is {n} plus {n}?") for n in range(2)]
        fb.react(iids)
        wait_for(lambda: all(store.counts(i) == fb.accepted[i] for i in iids), 90, "feedback counted", interval=0.3)
        wait_for(lambda: read_status(r1, PREFIX).get("buffer", 0) >= 2, 90, "the records in the trainer", interval=0.3)
        late = fb.query("Who wrote Hamlet?")  # signed now, reacted to after the restart

        registry = Registry(adapters, r1, PREFIX)
        registry.register(write_test_adapter(tiny_model_dir, adapters, "v-kept", seed=1))
        moved = fb.http.post("/admin/promote/v-kept", params={"wait": "true"}, headers=auth)
        assert moved.status_code == 200 and moved.json()["serving"] == "v-kept", moved.text
        counts_before = store.all_counts()
        assert counts_before == {i: fb.accepted[i] for i in iids}
        trainer_pid = read_status(r1, PREFIX)["pid"]
        r1.close()
        assert up.stop() == 0, up.logs()
        assert any((state / "redis").rglob("*.aof")), "the embedded Redis kept no append-only file"

        # ---------------------------------------------------------------- second run
        up = Up(env, port, log)
        wait_for(lambda: up.ready(fb.http), 240, "the API behind the second `rlhb up`", interval=0.5)
        assert token_file.read_text().strip() == token and log.read_text().count(token) == 2  # reused
        assert fb.http.get("/admin/checkpoints").status_code == 401
        r2 = _redis(state)
        store = AggregatorStore(r2, PREFIX)
        assert store.all_counts() == counts_before  # counts
        assert Registry(adapters, r2, PREFIX, sync=False).active() == "v-kept"  # registry and active version
        assert "v-kept" in {v.name for v in Registry(adapters, r2, PREFIX, sync=False).list()}
        assert fb.http.get("/readyz").json()["checks"]["adapter"]["serving"] == "v-kept"

        def trainer_reloaded() -> dict:
            status = read_status(r2, PREFIX)
            return status if status.get("pid") not in (None, trainer_pid) and status.get("state") == "idle" else {}

        status = wait_for(trainer_reloaded, 120, "the new trainer idle", interval=0.3)
        assert status["records_reloaded"] >= 2 and status["buffer"] >= 2  # the records it trains on
        kept = {json.loads(line)["impression_id"] for line in (state / RECORDS_FILE).read_text().splitlines()}
        assert set(iids) <= kept

        # New feedback after the restart, on an id signed before it: counted once. The like on
        # iids[0] was counted before the restart: still a duplicate (Feedback.send checks both).
        fb.react([late])
        fb.react(iids[:1], kinds=("like",))
        fresh = fb.query("What is a wavelength?")
        fb.react([fresh])

        def all_counted() -> bool:
            return store.all_counts() == {i: c for i, c in fb.accepted.items() if c}

        wait_for(all_counted, 90, "feedback after the restart counted", interval=0.3)
        time.sleep(2)  # a double count (a re-read of the new log) would show up now
        assert all_counted()
        wait_for(lambda: read_status(r2, PREFIX).get("buffer", 0) >= 4, 90, "new records reach the trainer")

        # An id signed with the old public dev constant is not this install's.
        forged = ImpressionSigner("dev-only-impression-secret").issue("e2e-test-client-01")
        event = {"event_id": "x" * 16, "impression_id": forged, "kind": "like"}
        refused = fb.http.post("/v1/feedback", json={"events": [event]})
        assert refused.status_code == 422 and "not an impression id issued by this server" in refused.text
        r2.close()
        assert up.stop() == 0, up.logs()
    finally:
        fb.http.close()
        up.stop()
