"""trainer.status: the trainer's phase, step k of M, ETA, curves and Prometheus metrics, from a real
metrics file (the lines trainer.algorithms.runner writes), the real Redis and a real HTTP scrape."""

from __future__ import annotations

import json

import httpx

from core.infra.ports import free_port
from core.process_status import read_curve, read_status
from trainer.metrics import MetricsWriter
from trainer.status import TrainerStatus


def test_a_round_goes_warmup_training_gating_idle_with_its_curve(redis_client, redis_prefix, tmp_path):
    port = free_port()
    status = TrainerStatus(redis_client, redis_prefix, period_s=1.0, metrics_port=port)
    status.serve()
    try:
        path = tmp_path / "round.jsonl"
        status.begin_round(7, 4, "admin request")
        status.watch(path)
        assert status.publish(lambda: {"active": "base"}, force=True)
        trainer = read_status(redis_client, redis_prefix, "trainer")
        assert trainer["state"] == "up"
        assert trainer["members"][0]["phase"] == "warmup" and trainer["members"][0]["round"] == 7

        writer = MetricsWriter(path)  # the runner's writer: the same file format
        for i in range(2):
            writer.write({"iteration": i, "d_reward": 0.1 * i, "kl": 0.02, "d_heldout_acc": 0.6, "clipfrac": 0.1,
                          "seconds": 2.0})  # fmt: skip
        with path.open("a") as f:
            f.write('{"iteration": 2, "d_rew')  # a line being written: not read yet
        status.publish(lambda: {"active": "base", "live_counts": {}}, force=True)
        m = read_status(redis_client, redis_prefix, "trainer")["members"][0]
        assert (m["phase"], m["step"], m["steps"]) == ("training", 2, 4)
        assert m["eta_s"] == 4.0 and m["iteration_s"] == 2.0 and m["d_acc"] == 0.6
        assert [p["reward"] for p in read_curve(redis_client, redis_prefix, 7)] == [0.0, 0.1]

        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'rlhb_trainer_phase{phase="training"} 1.0' in scrape
        assert "rlhb_trainer_round 7.0" in scrape and "rlhb_trainer_step 2.0" in scrape
        assert "rlhb_trainer_round_steps 4.0" in scrape and "rlhb_trainer_iteration_seconds 2.0" in scrape
        assert "rlhb_trainer_d_accuracy 0.6" in scrape and "rlhb_trainer_eta_seconds 4.0" in scrape

        with path.open("a") as f:
            f.write('ard": 0.2, "kl": 0.03, "seconds": 2.0}\n')  # the line completed
        status.set_phase("gating")
        status.publish(dict, force=True)
        m = read_status(redis_client, redis_prefix, "trainer")["members"][0]
        assert m["phase"] == "gating" and m["step"] == 3 and m["eta_s"] is None
        assert len(read_curve(redis_client, redis_prefix, 7)) == 3

        status.end_round({"round": 7, "outcome": "error", "reason": "RuntimeError: out of memory"})
        status.publish(dict, force=True)
        m = read_status(redis_client, redis_prefix, "trainer")["members"][0]
        assert m["phase"] == "idle" and m["last_error"] == "round 7: error: RuntimeError: out of memory"
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'rlhb_trainer_rounds_total{outcome="error"} 1.0' in scrape
    finally:
        status.close()
    # A clean stop: the trainer reads as down at once, and the port is free again.
    assert read_status(redis_client, redis_prefix, "trainer")["state"] == "down"
    again = TrainerStatus(redis_client, redis_prefix, period_s=1.0, metrics_port=port)
    again.serve()
    assert again._server is not None
    again.close()


def test_a_taken_port_or_redis_down_never_stops_the_trainer(redis_client, redis_prefix, tmp_path):
    port = free_port()
    first = TrainerStatus(redis_client, redis_prefix, period_s=1.0, metrics_port=port)
    first.serve()
    second = TrainerStatus(redis_client, redis_prefix, period_s=1.0, metrics_port=port)
    second.serve()  # the port is taken: a warning, no metrics, no exception
    assert second._server is None
    first.close()

    import redis

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    offline = TrainerStatus(dead, redis_prefix, period_s=1.0)
    assert offline.publish(lambda: {"x": json.dumps(1)}, force=True) is False
    assert offline.publish(dict) is False  # and throttled: not retried before the period
