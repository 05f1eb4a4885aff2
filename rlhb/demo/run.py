"""``run_demo``: the orchestration. Prepare the model and infrastructure, then per algorithm
start a lane, serve base traffic (first lane) or replay it, evaluate base, and for each round
train, gate, evaluate (or judge a rejected candidate offline), serve more traffic; finally
write the report and clean up the lanes' processes and Redis keys."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

from core.behavior.encoding import least_preferred_sentence
from rlhb.demo.ceiling import LoggedUnder, format_ceiling, pairs_path, remember, round_ceiling
from rlhb.demo.config import EVAL_SEED_OFFSET, DemoConfig, lane_algorithm
from rlhb.demo.judging import VersionResult, evaluate, judge_offline, rejudge
from rlhb.demo.lanes import (
    Lane,
    copy_records,
    delete_lane_keys,
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
    wait_trial_decision,
)
from rlhb.demo.report import behavior_gap, build_report, write_report


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


def live_row(
    algorithm: str, round_no: int, users: str, served: list, candidate: str = "", decided_at: float = 0.0, **extra
) -> dict:
    """One row of the per-round live table: the like rate (95% Wilson CI) of the answers served
    after a round, overall and per A/B arm (the candidate's answers vs the rest). The arms count only
    answers served before the trial's decision (``decided_at``, the trainer's clock; 0: all): after a
    promotion the rest of the batch comes from the candidate as the active version, not as an arm."""
    from rlhb.evaluation.stats import wilson_interval

    def rate(rows: list) -> dict:
        ci = wilson_interval(sum(s.asker_liked for s in rows), len(rows))
        return {"n": ci.n, "like_rate": ci.rate, "ci_low": ci.low, "ci_high": ci.high}

    row = {"algorithm": algorithm, "round": round_no, "users": users, **rate(served), **extra}
    if candidate:
        trial = [s for s in served if not decided_at or s.t <= decided_at]
        row["arms"] = {
            "active": rate([s for s in trial if s.adapter_version != candidate]),
            "candidate": rate([s for s in trial if s.adapter_version == candidate]),
        }
        row["after_decision"] = len(served) - len(trial)
    return row


def decision_reason(decision: dict | None) -> str:
    """The live guardrail's reason, and the data rollback it caused (``trainer.data_windows``), if any."""
    if not decision:
        return ""
    reason, dropped = decision.get("reason", ""), decision.get("data_quarantined")
    if dropped:
        reason += (
            f"; data rollback: {dropped['records_removed']} records it learned from (updated in its round's "
            "window) are out of training"
        )
    return reason


def run_demo(cfg: DemoConfig) -> dict:
    from core.infra.redis_url import redis_from_url
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
    redis = redis_from_url(infra.redis_url, decode_responses=True)  # any RLHB_REDIS_URL: Sentinel, Cluster
    results: list[VersionResult] = []
    lanes: list[Lane] = []
    first_records_topic = ""
    base_count = 0
    lane_info: dict[str, dict] = {}
    gap_answers: dict[str, tuple] = {}  # lane -> (version, least preferred sentence, its answers)
    live: list[dict] = []
    logged: LoggedUnder = {}  # impression id -> the users (and inversion) that gave its feedback: the D ceiling
    if cfg.drift:
        before, after, at = cfg.drift_parts()
        say(f"drift: users '{before}' until round {at}, then '{after}'")

    def finish(done: tuple[str, ...], say_tables: bool) -> dict:
        """Build and write the report of the lanes in ``done`` (all of them at the end)."""
        report = build_report(
            dataclasses.replace(cfg, algorithms=done), results, phases, time.time() - started, model_path
        )
        report["lanes"] = lane_info
        report["live_rounds"] = live
        report["drift"] = cfg.drift
        report["poison_round"] = cfg.poison_round
        report["ab_share"] = cfg.ab_share
        report["run_id"] = run_id
        report["complete"] = len(done) == len(cfg.algorithms)
        write_report(
            dataclasses.replace(cfg, algorithms=done),
            report,
            results,
            say if say_tables else (lambda *_: None),
            gap_answers,
        )
        if not say_tables:
            say(f"  report so far (lanes {', '.join(done)}) written to {cfg.out_dir / 'report.md'}")
        return report

    try:
        for lane_no, algorithm in enumerate(cfg.algorithms):
            t_lane = time.time()
            lane = make_lane(cfg, run_id, algorithm, infra, model_path)
            lanes.append(lane)
            say(f"[{cfg.label(algorithm)}] starting api, aggregator, trainer ({lane.root})")
            if lane_no > 0:
                copied = copy_records(infra.bootstrap, first_records_topic, lane.topics["records"])
                lane_info[algorithm] = {"replayed_records": copied}
                say(f"  replayed {copied} base-traffic records into this lane's records topic")
            lane.start()
            wait_ready(lane)
            phases[f"{algorithm}: start"] = time.time() - t_lane
            if lane_no == 0:
                t0 = time.time()
                poisoned = cfg.poison_round == 1
                say(f"  base traffic: {cfg.base_traffic} answers from base, users react{' (POISONED)' * poisoned}")
                base_traffic = traffic(
                    cfg.at_round(0), lane, train_qs, cfg.base_traffic, 0, say, "base traffic", invert=poisoned
                )
                base_count = len(base_traffic)
                remember(logged, base_traffic, cfg.users_at(0), poisoned)  # replayed to the other lanes, ids kept
                live.append(live_row("base", 0, cfg.users_at(0), base_traffic, poisoned=poisoned, decision=""))
                lane_info[algorithm] = {
                    "base_traffic_answers": base_count,
                    "records_in_buffer": wait_records(redis, lane, base_count, say),
                }
                first_records_topic = lane.topics["records"]
                phases["base traffic"] = time.time() - t0
                t0 = time.time()
                base = VersionResult("base", "base", 0, "base", round_info={"users": cfg.users_at(0)})
                base.served = evaluate(cfg.at_round(0), lane, "base", held_out, say)
                base.evaluated_at = time.time() - started
                results.append(base)
                if cfg.drift:  # the versions judged after the change compare with base judged by the same users
                    after = cfg.drift_parts()[1]
                    rejudged = VersionResult(
                        "base", f"base, judged by {after} users", 0, "base", round_info={"users": after}
                    )
                    rejudged.served = rejudge(base.served, after, cfg.seed + EVAL_SEED_OFFSET)
                    rejudged.evaluated_at = time.time() - started
                    results.append(rejudged)
                    rate = sum(s.asker_liked for s in rejudged.served) / max(1, len(rejudged.served))
                    say(f"  base's held-out answers judged by the new taste '{after}': like rate {rate:.3f}")
                phases["base evaluation"] = time.time() - t0
            else:
                wait_records(redis, lane, base_count, say)
            next_index = cfg.base_traffic
            for r in range(1, cfg.rounds + 1):
                rcfg = cfg.at_round(r)  # the users' taste after this round's training (drift)
                if cfg.poison_round == r and r > 1:
                    t0 = time.time()
                    say(f"  round {r} is poisoned: {cfg.traffic_per_round} answers with likes and dislikes swapped")
                    # Read before the traffic: its records may all be in the buffer by the time it returns.
                    have = int(trainer_status(redis, lane).get("buffer", 0))
                    bad = traffic(
                        cfg.at_round(r - 1), lane, train_qs, cfg.traffic_per_round, next_index, say, f"poison r{r}",
                        invert=True,
                    )  # fmt: skip
                    next_index += cfg.traffic_per_round
                    remember(logged, bad, cfg.users_at(r - 1), inverted=True)
                    wait_records(redis, lane, have + len(bad) - 5, say)
                    phases[f"{algorithm}: round {r} poisoned traffic"] = time.time() - t0
                t0 = time.time()
                rounds_before = len(trainer_rounds(redis, lane))
                post_admin(lane, "/admin/train", {"algorithm": lane_algorithm(algorithm), "reason": f"demo round {r}"})
                say(f"  round {r}: training {cfg.label(algorithm)} ({cfg.steps} steps)")
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
                vr.round_info["users"] = rcfg.users
                vr.round_info["poisoned"] = cfg.poison_round == r
                if lane_algorithm(algorithm) == "rlhb":  # D's held-out AUROC against the ceiling on its pairs
                    t0 = time.time()
                    vr.d_ceiling = (
                        round_ceiling(pairs_path(lane, version), logged, cfg.viewers_mean, cfg.users_at(r - 1))
                        if version
                        else {"available": False, "reason": f"no version was trained ({vr.status})"}
                    )
                    say(f"  round {r}: D vs ceiling: {format_ceiling(vr.d_ceiling)}")
                    phases[f"{algorithm}: round {r} D ceiling"] = time.time() - t0
                if vr.status == "trial":  # serving ab_share of live traffic: the guardrail decides
                    t0 = time.time()
                    served_ab: list = []
                    decision = None
                    for chunk in range(4):
                        served_ab += traffic(
                            rcfg, lane, train_qs, cfg.traffic_per_round, next_index, say, f"A/B r{r}.{chunk}"
                        )
                        remember(logged, served_ab, rcfg.users)
                        next_index += cfg.traffic_per_round
                        decision = wait_trial_decision(redis, lane, version, timeout_s=60)
                        if decision is not None:
                            break
                    phases[f"{algorithm}: round {r} A/B traffic"] = time.time() - t0
                    verdict = decision["decision"] if decision else "undecided"
                    reason = decision_reason(decision)
                    vr.round_info["guardrail"] = decision or {"decision": "undecided"}
                    live.append(
                        live_row(algorithm, r, rcfg.users, served_ab, candidate=version,
                                 decided_at=(decision or {}).get("at", 0.0), poisoned=cfg.poison_round == r,
                                 version=version, decision=verdict, reason=reason)
                    )  # fmt: skip
                    say(f"  round {r}: live guardrail {verdict} {version} {reason}")
                    if decision is None:
                        say("  the A/B trial is still undecided: no further round can start on this lane")
                        vr.status = "undecided"
                        break
                    vr.status = "published" if verdict == "promoted" else "rejected"
                    vr.reason = decision.get("reason", vr.reason)
                if vr.status != "published":
                    if vr.status == "rejected" and version and cfg.judge_rejected:
                        t0 = time.time()
                        vr.served = judge_offline(rcfg, lane, version, held_out, model_path, say)
                        vr.evaluated_at = time.time() - started
                        phases[f"{algorithm}: round {r} offline judging"] = time.time() - t0
                    continue
                wait_serving(lane, version)
                t0 = time.time()
                vr.served = evaluate(rcfg, lane, version, held_out, say)
                vr.evaluated_at = time.time() - started
                phases[f"{algorithm}: round {r} evaluation"] = time.time() - t0
                if r < cfg.rounds and cfg.traffic_per_round and cfg.ab_share == 0:
                    t0 = time.time()
                    served = traffic(rcfg, lane, train_qs, cfg.traffic_per_round, next_index, say, f"traffic r{r}")
                    remember(logged, served, rcfg.users)
                    live.append(
                        live_row(algorithm, r, rcfg.users, served, poisoned=cfg.poison_round == r, version=version,
                                 decision="published")
                    )  # fmt: skip
                    next_index += cfg.traffic_per_round
                    have = int(trainer_status(redis, lane).get("buffer", 0))
                    wait_records(redis, lane, have + len(served) - 5, say)
                    phases[f"{algorithm}: round {r} traffic"] = time.time() - t0
            mine = [v for v in results if v.algorithm == algorithm and v.served]
            last = mine[-1] if mine else None  # the last version judged: served, or rejected and judged offline
            if cfg.behavior_gap and last is not None:
                t0 = time.time()
                rcfg, least_sentence = cfg.at_round(last.round), least_preferred_sentence()
                if last.status == "published":
                    least = evaluate(rcfg, lane, last.version, held_out, say, least_sentence)
                else:  # never served: generated here, as its served-sentence answers were
                    least = judge_offline(rcfg, lane, last.version, held_out, model_path, say, least_sentence)
                gap = {"version": last.version, **behavior_gap(last.served, least)}
                lane_info.setdefault(algorithm, {})["behavior_gap"] = gap
                gap_answers[algorithm] = (last.version, least_sentence, least)
                phases[f"{algorithm}: behavior gap"] = time.time() - t0
            lane.stop()
            phases[f"{algorithm}: lane total"] = time.time() - t_lane
            if lane_no + 1 < len(cfg.algorithms):  # a long run cut short still leaves its finished lanes' report
                finish(cfg.algorithms[: lane_no + 1], say_tables=False)
        return finish(cfg.algorithms, say_tables=True)
    finally:
        for lane in lanes:
            lane.stop()
            if not cfg.keep_redis_state:
                delete_lane_keys(redis, lane.prefix)
        redis.close()
        infra.stop()
        say.close()
