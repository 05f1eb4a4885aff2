"""``run_demo``: the orchestration. Prepare the model and infrastructure, then per algorithm
start a lane, serve base traffic (first lane) or replay it, evaluate base, and for each round
train, gate, evaluate (or judge a rejected candidate offline), serve more traffic; finally
write the report and clean up the lanes' processes and Redis keys."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from rlhb.demo.config import ALGORITHM_LABELS, DemoConfig
from rlhb.demo.judging import VersionResult, evaluate, judge_offline
from rlhb.demo.lanes import (
    Lane,
    copy_records,
    make_lane,
    post_admin,
    traffic,
    trainer_metrics,
    trainer_rounds,
    trainer_status,
    wait_ready,
    wait_records,
    wait_round,
    wait_serving,
)
from rlhb.demo.report import build_report, write_report


class Console:
    """Timestamped progress lines (stdout) and a log file."""

    def __init__(self, path: Path) -> None:
        self.t0 = time.time()
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def prepare_model(cfg: DemoConfig, say) -> str:
    from core.model_prep import build_tiny_model
    from core.model_prep import prepare_model as prepare_smollm2

    if cfg.model_path:
        return cfg.model_path
    smollm2 = prepare_smollm2(log=say)
    if not cfg.quick:
        return str(smollm2)
    target = cfg.out_dir / "tiny-model"
    if not (target / "config.json").exists():
        build_tiny_model(target, smollm2)
    return str(target)


def run_demo(cfg: DemoConfig) -> dict:
    import redis as redis_lib

    from core.infra.resolve import resolve_infra
    from core.settings import CommonSettings
    from rlhb.queries import split_questions

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    say = Console(cfg.out_dir / "demo.log")
    started = time.time()
    phases: dict[str, float] = {}
    run_id = uuid.uuid4().hex[:8]
    split = split_questions()
    held_out = list(split.held_out[: cfg.eval_questions] if cfg.eval_questions else split.held_out)
    train_qs = list(split.train[: cfg.train_questions] if cfg.train_questions else split.train)
    say(
        f"rlhb demo {run_id}: algorithms {', '.join(cfg.algorithms)}, {cfg.rounds} round(s) of {cfg.steps} steps, "
        f"users '{cfg.users}', {len(train_qs)} training / {len(held_out)} held-out questions"
    )
    model_path = prepare_model(cfg, say)
    infra = resolve_infra(CommonSettings(), create_topics=False)
    redis = redis_lib.Redis.from_url(infra.redis_url, decode_responses=True)
    results: list[VersionResult] = []
    lanes: list[Lane] = []
    first_records_topic = ""
    base_count = 0
    lane_info: dict[str, dict] = {}
    try:
        for lane_no, algorithm in enumerate(cfg.algorithms):
            t_lane = time.time()
            lane = make_lane(cfg, run_id, algorithm, infra, model_path)
            lanes.append(lane)
            say(f"[{ALGORITHM_LABELS.get(algorithm, algorithm)}] starting api, aggregator, trainer ({lane.root})")
            if lane_no > 0:
                copied = copy_records(infra.bootstrap, first_records_topic, lane.topics["records"])
                lane_info[algorithm] = {"replayed_records": copied}
                say(f"  replayed {copied} base-traffic records into this lane's records topic")
            lane.start()
            wait_ready(lane)
            phases[f"{algorithm}: start"] = time.time() - t_lane
            if lane_no == 0:
                t0 = time.time()
                say(f"  base traffic: {cfg.base_traffic} answers from base, users react")
                base_traffic = traffic(cfg, lane, train_qs, cfg.base_traffic, 0, say, "base traffic")
                base_count = len(base_traffic)
                lane_info[algorithm] = {
                    "base_traffic_answers": base_count,
                    "records_in_buffer": wait_records(redis, lane, base_count, say),
                }
                first_records_topic = lane.topics["records"]
                phases["base traffic"] = time.time() - t0
                t0 = time.time()
                base = VersionResult("base", "base", 0, "base")
                base.served = evaluate(cfg, lane, "base", held_out, say)
                base.evaluated_at = time.time() - started
                results.append(base)
                phases["base evaluation"] = time.time() - t0
            else:
                wait_records(redis, lane, base_count, say)
            next_index = cfg.base_traffic
            for r in range(1, cfg.rounds + 1):
                t0 = time.time()
                rounds_before = len(trainer_rounds(redis, lane))
                post_admin(lane, "/admin/train", {"algorithm": algorithm, "reason": f"demo round {r}"})
                say(f"  round {r}: training {ALGORITHM_LABELS.get(algorithm, algorithm)} ({cfg.steps} steps)")
                outcome = wait_round(redis, lane, rounds_before, cfg, say)
                train_s = time.time() - t0
                phases[f"{algorithm}: round {r} training"] = train_s
                version = outcome.get("version", "")
                metrics = trainer_metrics(lane, version)
                vr = VersionResult(
                    algorithm,
                    version or f"(round {r})",
                    r,
                    outcome.get("outcome", "?"),
                    outcome.get("reason", ""),
                    train_metrics=metrics,
                    train_seconds=train_s,
                    round_info={k: v for k, v in outcome.items() if k not in ("train_metrics",)},
                )
                results.append(vr)
                say(
                    f"  round {r}: {vr.status} {version} {('(' + vr.reason + ')') if vr.reason else ''} "
                    f"after {train_s:.0f}s"
                )
                if vr.status != "published":
                    if vr.status == "rejected" and version and cfg.judge_rejected:
                        t0 = time.time()
                        vr.served = judge_offline(cfg, lane, version, held_out, model_path, say)
                        vr.evaluated_at = time.time() - started
                        phases[f"{algorithm}: round {r} offline judging"] = time.time() - t0
                    continue
                wait_serving(lane, version)
                t0 = time.time()
                vr.served = evaluate(cfg, lane, version, held_out, say)
                vr.evaluated_at = time.time() - started
                phases[f"{algorithm}: round {r} evaluation"] = time.time() - t0
                if r < cfg.rounds and cfg.traffic_per_round:
                    t0 = time.time()
                    served = traffic(cfg, lane, train_qs, cfg.traffic_per_round, next_index, say, f"traffic r{r}")
                    next_index += cfg.traffic_per_round
                    have = int(trainer_status(redis, lane).get("buffer", 0))
                    wait_records(redis, lane, have + len(served) - 5, say)
                    phases[f"{algorithm}: round {r} traffic"] = time.time() - t0
            lane.stop()
            phases[f"{algorithm}: lane total"] = time.time() - t_lane
        total = time.time() - started
        report = build_report(cfg, results, phases, total, model_path)
        report["lanes"] = lane_info
        report["run_id"] = run_id
        write_report(cfg, report, results, say)
        return report
    finally:
        for lane in lanes:
            lane.stop()
            if not cfg.keep_redis_state:
                keys = list(redis.scan_iter(match=lane.prefix + "*", count=1000))
                if keys:
                    redis.delete(*keys)
        redis.close()
        infra.stop()
        say.close()
