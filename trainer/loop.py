"""The background trainer (``rlhb trainer``): behavior records in, gated adapter versions out.

Threads:

- **consumer** (the caller's thread): polls ``behavior-records`` (consumer group, auto-commit
  off), keeps the replay buffer and the live counts, pops training requests, runs the
  guardrail, starts rounds, commits offsets when a round finishes, publishes the status.
  It keeps polling during a round, so the group membership never lapses (a round takes
  minutes; ``max_poll_interval_ms`` is seconds) and new records keep arriving.
- **round** (one at a time): sample the buffer, train the configured algorithm
  (``trainer.algorithms``), register the checkpoint, gate it (``trainer.gate``), promote or
  reject, prune. Training happens only here, in the trainer process: serving never waits.

Rounds start every ``records_per_round`` new records, or when a request is queued on the Redis
list ``{prefix}train:requests`` (``POST /admin/train`` pushes ``{"reason", "algorithm"?}``; a
request pushed straight to Redis may also carry ``"gate": {GateConfig overrides}``).

Resume (the simple correct scheme): the buffer is reloaded from the trainer's record file
(``trainer/record_store.py``: the embedded broker forgets its topics on restart) and then rebuilt
by re-reading the records topic from the beginning on every start (``seek_to_beginning`` on
assignment; the buffer keeps the latest record per impression, so re-reading is idempotent). Committed offsets only mark
which records a finished round has seen: records after them count as *new*, so a round
killed half-way is redone after a restart. Offsets are committed after the round's registry
state is stored. A request being served sits in ``{prefix}train:inflight`` and is put back
on the queue at start. The registry is crash-safe on its own (``core.registry``): at
start, temp folders and finished-but-unregistered folders are removed.

A/B trials (``ab_share`` > 0, ``RLHB_TRAINER_AB_SHARE``): a candidate that passes the gate is
not made active; it serves that share of live traffic next to the active version (the
registry's ``start_trial``). Every step the trainer compares the two arms' like rates over the
same period (``trainer.guardrail.ab_test``) and ends the trial (``Registry.end_trial``): a
significant drop rejects the candidate (traffic returns to the active version), ``ab_min_views``
views per arm without one promote it, unless the answers the candidate's arm served fail the
gate's behavior guard against the active arm's (near-empty, refusals, repetition, length,
relevance; ``trainer.gate.live_arms_guard``, once each arm has ``ab_guard_min_answers``
answers): then it is rejected with that reason. No round starts while a trial runs, so every version
serves live traffic before the next one is trained on top of the active version. The trial
lives in the registry (manifest + Redis) and the counts are rebuilt from the records topic,
so a restarted trainer picks the trial up where it was. With ``ab_share`` = 0 the candidate is
promoted at once and the parent-vs-child guardrail (``guardrail``) watches it.

Device (``RLHB_DEVICE``, ``RLHB_DTYPE``; ``core/device.py``): the round's models (policy, critic,
discriminator) and the gate's run there; resolved once at start, so a CUDA setting on a machine
without CUDA stops the trainer at start with an error naming the variable.

Several processes (``torchrun --nproc_per_node N -m rlhb.cli trainer``; ``trainer/distributed.py``):
rank 0 is this trainer (Kafka, Redis, registry, gate, checkpoints); at each round it broadcasts
the round's request to the other ranks, which train replicas alongside it with averaged
gradients (every algorithm; sft and pro split each batch by rank). Between rounds rank 0 sends
heartbeats from the consumer thread; during a round only the round thread talks to the other
ranks, so the two threads never interleave collectives. Each rank on GPUs takes
``cuda:LOCAL_RANK``.

Redis keys written (``P`` = redis_prefix): ``P train:status`` (JSON, every second),
``P train:rounds`` (list of round results as JSON, newest last, last 200),
``P train:round_seq`` (round counter), ``P train:inflight``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from core.behavior.encoding_store import encoding_key, load_encoding
from core.infra.kafka_security import kafka_client_options
from core.infra.redis_url import redis_from_url
from core.registry import PointerPublishError, Registry, RegistryError
from core.settings import TrainerSettings
from schemas.adapters import BASE_VERSION
from schemas.behavior import BehaviorRecord
from trainer.data_windows import FILE_NAME as DATA_WINDOWS_FILE
from trainer.data_windows import DataWindows
from trainer.guardrail import GuardrailConfig, LiveCounts, ab_test, drop_test
from trainer.record_store import FILE_NAME as RECORDS_FILE
from trainer.record_store import RecordStore
from trainer.replay_buffer import ReplayBuffer
from trainer.status import TrainerStatus

log = logging.getLogger(__name__)

ROUNDS_KEPT = 200


LoopSettings = TrainerSettings
"""The trainer's settings, all declared in core/settings.py (``RLHB_TRAINER_*``); kept as an alias."""


def guardrail_config(settings: TrainerSettings) -> GuardrailConfig:
    return GuardrailConfig(
        settings.guardrail_alpha, settings.guardrail_tau, settings.guardrail_margin, settings.guardrail_min_views
    )


def build_gate_config(settings: TrainerSettings):
    """``RLHB_TRAINER_GATE__*``; the gate's seed is RLHB_TRAINER_SEED unless RLHB_TRAINER_GATE__SEED is set."""
    if "seed" in settings.gate.model_fields_set:
        return settings.gate
    return settings.gate.model_copy(update={"seed": settings.seed})


def gate_with(config, changes: dict):
    """Per-round gate overrides (a request's ``"gate"``): fields the gate does not have are skipped."""
    known = {k: v for k, v in changes.items() if k in type(config).model_fields}
    if len(known) < len(changes):
        log.info("request gate: %s are not gate fields; ignored", sorted(set(changes) - set(known)))
    return type(config).model_validate({**config.model_dump(), **known})


def build_algorithm_config(settings: TrainerSettings, algorithm: str):
    """The algorithm's Config with the RLHB_TRAINER_ALGO__<FIELD> variables applied. They are written
    for the configured algorithm (an unknown field stops the trainer at start): a round that asks for
    another one (POST /admin/train {"algorithm": ...}) gets only the fields its Config also has."""
    from trainer.algorithms import default_config
    from trainer.config import apply_overrides

    strict = algorithm == settings.algorithm
    return apply_overrides(default_config(algorithm), settings.algo, variable="RLHB_TRAINER_ALGO", strict=strict)


class TrialRegistry:
    """The registry as the gate sees it when ``ab_share`` > 0: ``promote`` starts an A/B trial
    (the candidate serves that share of traffic) instead of moving the pointer; everything else
    is the registry's."""

    def __init__(self, registry: Registry, share: float):
        self._registry, self._share = registry, share
        self.trial_started = False

    def promote(self, name: str):
        self._registry.start_trial(name, self._share)
        self.trial_started = True
        return self._registry.get(name)

    def __getattr__(self, attr: str):
        return getattr(self._registry, attr)


class Trainer:
    """One trainer process: call ``start()``, then ``step()`` in a loop (or ``run()``)."""

    def __init__(
        self,
        settings: TrainerSettings,
        bootstrap: str,
        redis_url: str,
        model_path: str | None = None,
        dist_ctx=None,
    ):
        """``dist_ctx``: this process's ``trainer.distributed.DistContext`` (rank 0) under torchrun; None alone."""

        from core.device import dtype_name
        from trainer.distributed import SINGLE_PROCESS, rank_device

        self.settings = settings
        self.dist = dist_ctx or SINGLE_PROCESS
        if not self.dist.is_main:
            raise ValueError("only rank 0 runs the trainer loop; the other ranks run trainer.distributed.follow_rounds")
        device, dtype = rank_device(settings.device, settings.dtype, self.dist)  # fails now on a bad setting
        self.device, self.dtype = str(device), dtype_name(dtype)
        self._last_heartbeat = time.monotonic()
        self.bootstrap = bootstrap
        self.model_path = model_path or settings.resolved_model_path()
        self.redis = redis_from_url(redis_url, decode_responses=True)
        self.registry = Registry(settings.adapter_dir, self.redis, settings.redis_prefix)
        self.buffer = ReplayBuffer(settings.buffer_size, settings.recency_half_life)
        self.live = LiveCounts()
        self.store = RecordStore(Path(settings.state_dir) / RECORDS_FILE, settings.buffer_size)
        self.reloaded = 0  # records reloaded from the store at start
        self.data_windows = DataWindows(Path(settings.state_dir) / DATA_WINDOWS_FILE)
        self.quarantined_records = 0  # records kept out of training by a data rollback (this process)
        self.guardrail_cfg = guardrail_config(settings)
        self.gate_cfg = build_gate_config(settings)
        build_algorithm_config(settings, settings.algorithm)  # fail at start on a bad override, not in round 1
        p = settings.redis_prefix
        self.requests_key, self.inflight_key = f"{p}train:requests", f"{p}train:inflight"
        self.status_key, self.rounds_key, self.round_seq_key = (
            f"{p}train:status",
            f"{p}train:rounds",
            f"{p}train:round_seq",
        )
        self.consumer = None
        self.new_records = 0
        self.rounds_done = 0
        self.last_round: dict = {}
        self.guardrail_rollbacks: list[dict] = []
        self.trial_decisions: list[dict] = []
        self.trial_look: dict = {}  # the last look at the running trial (status)
        self._committed_at_start: dict = {}  # TopicPartition -> committed offset when first assigned
        self._seen_upto: dict = {}  # TopicPartition -> next offset not yet processed
        self._unknown_committed: set = set()  # assigned partitions whose committed offset is not fetched yet
        self._round: threading.Thread | None = None
        self._round_result: dict | None = None
        self._round_offsets: dict = {}
        self._round_started = 0.0
        self._last_status = 0.0
        self._state = "starting"
        # /admin/status, the dashboard, Prometheus (trainer/status.py): phase, step k of M, curves
        self.progress = TrainerStatus(self.redis, p, settings.status_period_s, settings.metrics_port)

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        from kafka import ConsumerRebalanceListener

        from core.infra.broker import group_consumer

        removed = self.registry.clean()
        if removed["temp"] or removed["unregistered"]:
            log.warning("removed leftovers of an interrupted run: %s", removed)
        self.registry.sync()
        self._reload_records()
        while self.redis.lmove(self.inflight_key, self.requests_key, "RIGHT", "LEFT"):
            log.info("re-queued a training request interrupted by the last stop")

        s = self.settings
        self.consumer = group_consumer(
            self.bootstrap,
            group_id=s.group_id,
            client_id=f"rlhb-trainer-{os.getpid()}",
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            poll_timeout_ms=s.poll_timeout_ms,
            **kafka_client_options(s),
        )
        trainer = self

        class Replay(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                # Runs on kafka-python's IO thread: no blocking calls here (committed offsets
                # are fetched by the consumer thread before the first batch is ingested).
                trainer._unknown_committed.update(tp for tp in assigned if tp not in trainer._committed_at_start)
                if assigned:
                    trainer.consumer.seek_to_beginning(*assigned)  # rebuild the buffer from the log

        self.consumer.subscribe([s.topic_records], listener=Replay())
        self._state = "idle"
        self.progress.serve()
        log.info(
            "trainer up: %s on %s, group %s, algorithm %s, round every %d records, adapters in %s",
            s.topic_records,
            self.bootstrap,
            s.group_id,
            s.algorithm,
            s.records_per_round,
            self.registry.root,
        )

    def _reload_records(self) -> None:
        """The records kept on disk into the buffer and the live counts (before the topic is read),
        then the file rewritten from the buffer: bounded, deduplicated, no torn line."""
        for record in self.store.load():
            self.live.add(record)
            if self.data_windows.is_quarantined(record):
                self.quarantined_records += 1
                continue
            self.buffer.add(record)
            self.reloaded += 1
        self.store.rewrite(self.buffer.records())
        if self.reloaded:
            log.info("reloaded %d records (%d impressions) from %s", self.reloaded, len(self.buffer), self.store.path)

    def close(self) -> None:
        self.store.close()
        if self.dist.distributed and self._round is None:  # mid-round the round thread owns the collectives
            from trainer.distributed import send_message

            send_message(self.dist, {"kind": "stop"})
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        self._publish_status(force=True, state="stopped")
        self.progress.close()
        self.redis.close()

    @property
    def training(self) -> bool:
        return self._round is not None

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event | None = None, max_rounds: int = 0) -> None:
        """Step until ``stop`` is set or ``max_rounds`` rounds finished (0: forever)."""
        stop = stop or threading.Event()
        while not stop.is_set() and not (max_rounds and self.rounds_done >= max_rounds):
            self.step()

    def step(self) -> None:
        batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
        while self._unknown_committed:
            tp = self._unknown_committed.pop()
            self._committed_at_start[tp] = self.consumer.committed(tp) or 0
        read = [r for tp, messages in batch.items() for message in messages if (r := self._ingest(tp, message))]
        self.store.append(read)
        if self.store.needs_compaction:
            self.store.rewrite(self.buffer.records())
        if self.settings.guardrail and self.settings.ab_share == 0:
            self.check_guardrail()
        self.check_trial()
        if self._round is not None and not self._round.is_alive():
            self._finish_round()
        if self._round is None:
            self._heartbeat()
            self._maybe_start_round()
        self._publish_status()

    def _heartbeat(self) -> None:
        """Under torchrun, between rounds: tell the waiting ranks rank 0 is alive (within their timeout).
        Only called while no round thread runs, so collectives never come from two threads at once."""
        from trainer.distributed import HEARTBEAT_SECONDS, send_message

        if self.dist.distributed and time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            send_message(self.dist, {"kind": "idle"})
            self._last_heartbeat = time.monotonic()

    def _ingest(self, tp, message) -> BehaviorRecord | None:
        try:
            record = BehaviorRecord.model_validate_json(message.value)
        except ValueError as e:
            log.warning(
                "skipping an unreadable record at %s:%d offset %d (%s)",
                tp.topic,
                tp.partition,
                message.offset,
                str(e).splitlines()[0],
            )
            record = None
        if record is not None:
            self.live.add(record)  # what was served, for the guardrail, quarantined or not
            if self.data_windows.is_quarantined(record):
                self.quarantined_records += 1
                record = None
        if message.offset >= self._seen_upto.get(tp, 0):
            self._seen_upto[tp] = message.offset + 1
            if record is not None and message.offset >= self._committed_at_start.get(tp, 0):
                self.new_records += 1
        if record is not None:
            self.buffer.add(record)
        return record

    # ------------------------------------------------------------------ rounds
    def _maybe_start_round(self) -> None:
        request = None
        if self._trial_running():
            return  # every version serves live traffic (and is decided) before the next round
        raw = self.redis.lmove(self.requests_key, self.inflight_key, "LEFT", "RIGHT")
        if raw is not None:
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                request = {"reason": "admin request", "raw": raw[:200]}
            request["_raw"] = raw
        elif self.new_records < self.settings.records_per_round:
            return
        round_no = int(self.redis.incr(self.round_seq_key))
        self._round_offsets = dict(self._seen_upto)
        self.new_records = 0
        self._round_result = None
        self._round_started = time.time()
        self._state = "training"
        trigger = "request" if request else f"{self.settings.records_per_round} new records"
        self.progress.begin_round(round_no, self.settings.steps_per_round, (request or {}).get("reason", trigger))
        log.info("round %d starts (%s), buffer %d records", round_no, trigger, len(self.buffer))
        self._round = threading.Thread(
            target=self._round_main, args=(round_no, request or {}), daemon=True, name=f"round-{round_no}"
        )
        self._round.start()

    def _round_main(self, round_no: int, request: dict) -> None:
        try:
            self._round_result = self.run_round(round_no, request)
        except BaseException as e:  # noqa: BLE001 - the consumer thread reports it, the process lives on
            log.error("round %d failed:\n%s", round_no, traceback.format_exc())
            self._round_result = {"round": round_no, "outcome": "error", "reason": f"{type(e).__name__}: {e}"}

    def run_round(self, round_no: int, request: dict) -> dict:
        """Sample, train, register, gate, promote or reject, prune. Returns the round's summary."""
        from core.behavior.encoding import infer_encoding, most_preferred_sentence
        from trainer.algorithms import TrainingDiverged, TrainRequest, get_algorithm
        from trainer.gate import gate_and_publish
        from trainer.heldout_pairs import heldout_pairs_path
        from trainer.reward_models.split import split_by_query

        s = self.settings
        started = time.time()
        algorithm = request.get("algorithm") or s.algorithm
        summary: dict[str, Any] = {
            "round": round_no,
            "algorithm": algorithm,
            "started_at": started,
            "reason_for_round": request.get("reason", "records"),
        }
        active = self.registry.active()
        parent = None
        if active != BASE_VERSION:
            try:
                parent = self.registry.validate(active)
            except RegistryError as e:
                log.warning("active version %s cannot be trained on (%s); starting from a fresh adapter", active, e)
        rng = random.Random(s.seed + round_no)
        # Continual rounds (RLHB_TRAINER_REPLAY_SHARE): what the active version has not learned from comes first.
        fresh_since = self.data_windows.until(parent.name) if parent and s.replay_share is not None else None
        records = self.buffer.sample(s.sample_size, rng, fresh_since=fresh_since, replay_share=s.replay_share)
        if fresh_since is not None:
            summary["fresh_records"] = sum(r.updated_at > fresh_since for r in records)
        train, heldout = split_by_query(records, s.heldout_fraction, s.seed + round_no)
        summary.update(records=len(records), train_records=len(train), heldout_records=len(heldout))
        if len(train) < s.min_records or not heldout:
            return {
                **summary,
                "outcome": "skipped",
                "reason": f"{len(train)} training records (need {s.min_records}) and {len(heldout)} held-out "
                "(need >= 1, from a second distinct query)",
            }

        name = f"{algorithm}-r{round_no:04d}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        summary["data_window"] = self.data_windows.record_round(name, parent.name if parent else None, records)
        metrics_dir = Path(s.state_dir) / "trainer-metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        self.progress.watch(metrics_dir / f"{name}.jsonl")
        train_request = TrainRequest(
            records=train,
            model_path=self.model_path,
            output_root=self.registry.root,
            version_name=name,
            parent=parent,
            metrics_path=metrics_dir / f"{name}.jsonl",
            heldout_pairs_path=heldout_pairs_path(metrics_dir, name),  # RLHB: D's held-out pairs, for a ceiling
            seed=s.seed + round_no,
            steps=s.steps_per_round,
            progress=False,
            encoding=self._stored_encoding(),  # the aggregator's: what the API serves
            device=self.device,
            dtype=self.dtype,
        )
        config = build_algorithm_config(s, algorithm)
        try:
            if self.dist.distributed:  # every rank trains a replica; rank 0 alone gets the RunResult
                from trainer.distributed import send_round, train_round

                send_round(self.dist, algorithm, train_request, config)
                result = train_round(algorithm, train_request, config, self.dist)
                self._last_heartbeat = time.monotonic()
            else:
                result = get_algorithm(algorithm)(train_request, config)
        except TrainingDiverged as e:
            return {**summary, "outcome": "diverged", "reason": str(e), "seconds": time.time() - started}
        summary["train_seconds"] = time.time() - started
        import gc

        gc.collect()  # free the round's policy/critic/D before the gate loads its own copy of the base
        version = self.registry.register(result.checkpoint)
        gate_cfg = self.gate_cfg
        if isinstance(request.get("gate"), dict):  # per-round gate overrides (tests, experiments)
            gate_cfg = gate_with(gate_cfg, request["gate"])
        publisher = TrialRegistry(self.registry, s.ab_share) if s.ab_share > 0 else self.registry
        self.progress.set_phase("gating")
        served = most_preferred_sentence(train_request.encoding or infer_encoding(train))  # what the API serves
        gate = gate_and_publish(
            publisher,
            version,
            self.model_path,
            heldout,
            gate_cfg,
            served_behavior=served,
            device=self.device,
            dtype=self.dtype,
        )
        self.progress.set_phase("publishing")
        pruned = self.registry.prune(s.keep_versions)
        final = {k: v for k, v in (result.metrics[-1] if result.metrics else {}).items() if isinstance(v, int | float)}
        outcome = "published" if gate.passed else "rejected"
        if gate.passed and s.ab_share > 0:
            outcome = "trial"  # serving ab_share of traffic; check_trial promotes or rejects it
            summary["ab_share"] = s.ab_share
        return {
            **summary,
            "outcome": outcome,
            "version": version.name,
            "version_id": version.id,
            "parent": parent.name if parent else None,
            "reason": gate.reason,
            "gate": gate.metrics,
            "gate_behavior": served if gate_cfg.prompt_behavior == "served" else "each record's own sentence",
            "train_metrics": final,
            "pruned": pruned,
            "seconds": time.time() - started,
        }

    def _finish_round(self) -> None:
        from kafka.structs import OffsetAndMetadata

        result = self._round_result or {"outcome": "error", "reason": "the round thread ended without a result"}
        self._round = None
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._round_offsets.items()}
        if offsets:
            try:
                self.consumer.commit(offsets)  # only now: the round's registry state is on disk
            except Exception as e:  # noqa: BLE001 - a rebalance; the records just count as new again
                log.warning(
                    "offset commit after round %s failed (%s); its records will count as new", result.get("round"), e
                )
        self.redis.lpop(self.inflight_key)
        result["finished_at"] = time.time()
        self.last_round = result
        self.rounds_done += 1
        pipe = self.redis.pipeline(transaction=True)  # explicit: a Cluster client's pipeline() is not a transaction
        pipe.rpush(self.rounds_key, json.dumps(result, default=str))
        pipe.ltrim(self.rounds_key, -ROUNDS_KEPT, -1)
        pipe.execute()
        self._state = "idle"
        self.progress.end_round(result)
        log.info(
            "round %s: %s %s %s",
            result.get("round"),
            result.get("outcome"),
            result.get("version", ""),
            result.get("reason", ""),
        )
        self._publish_status(force=True)

    # ------------------------------------------------------------------ guardrail
    def check_guardrail(self) -> dict | None:
        """Roll back the active version if its live like rate is significantly below its parent's."""
        active = self.registry.active()
        if active == BASE_VERSION:
            return None
        try:
            baseline = self.registry.get(active).parent or BASE_VERSION
        except KeyError:
            return None
        child_views, child_likes = self.live.get(active)
        parent_views, parent_likes = self.live.get(baseline)
        decision = drop_test(child_likes, child_views, parent_likes, parent_views, self.guardrail_cfg)
        if not decision.rollback:
            return None
        try:
            restored = self.registry.rollback(reject_current=decision.reason)
        except PointerPublishError as e:  # done (durable in the manifest); Redis catches up at the next read
            log.warning("guardrail rollback of %s: %s", active, e)
            restored = e.active
        except RegistryError as e:
            log.error("guardrail wanted to roll back %s but could not: %s", active, e)
            return None
        event = {"at": time.time(), "rolled_back": active, "restored": restored, "reason": decision.reason}
        event["data_quarantined"] = self._quarantine(active, decision.reason)
        self.guardrail_rollbacks.append(event)
        log.warning("%s -> rolled back %s, %s active", decision.reason, active, restored)
        self._publish_status(force=True)
        return event

    def _trial_running(self) -> bool:
        try:
            return self.registry.serving()[1] is not None
        except Exception as e:  # noqa: BLE001 - Redis away: do not start a round on a guess
            log.warning("cannot read the A/B trial (%s); not starting a round now", e)
            return True

    def check_trial(self) -> dict | None:
        """Look at the running A/B trial (if any) and end it when the guardrail decides: reject
        the candidate on a significant live like-rate drop against the active arm over the same
        period, promote it after ``ab_min_views`` views per arm without one. The decision, or None."""
        trial = self.registry.serving()[1]
        self.live.forget_answers(trial.candidate if trial is not None else None)
        if trial is None:
            self.trial_look = {}
            return None
        cand_views, cand_likes = self.live.get_arm(trial.candidate, "candidate")
        act_views, act_likes = self.live.get_arm(trial.candidate, "active")
        look = ab_test(cand_likes, cand_views, act_likes, act_views, self.settings.ab_min_views, self.guardrail_cfg)
        users_liked_it_less = look.outcome == "reject"  # not the behavior guard's reject below: not the data's fault
        behavior: dict[str, Any] = {}
        if look.outcome == "promote":  # users did not like it less: did it get there by gaming them?
            behavior, problem = self._live_behavior_guard(trial.candidate)
            if problem:
                look = dataclasses.replace(look, outcome="reject", reason=problem)
        self.trial_look = {
            "candidate": trial.candidate,
            "active": trial.active,
            "share": trial.share,
            "arms": {
                "candidate": {"views": cand_views, "likes": cand_likes},
                "active": {"views": act_views, "likes": act_likes},
            },
            "statistic": look.statistic,
            "diff": look.diff,
        }
        if look.outcome == "wait":
            return None
        try:
            now_active = self.registry.end_trial(trial.candidate, promote=look.outcome == "promote", reason=look.reason)
        except PointerPublishError as e:  # decided (durable in the manifest); Redis catches up at the next read
            log.warning("A/B trial of %s: %s", trial.candidate, e)
            now_active = e.active
        except RegistryError as e:  # decided elsewhere (another trainer, an admin) meanwhile
            log.info("A/B trial of %s not ended here: %s", trial.candidate, e)
            return None
        event = {
            "at": time.time(),
            "candidate": trial.candidate,
            "active": trial.active,
            "share": trial.share,
            "decision": "promoted" if look.outcome == "promote" else "rejected",
            "now_active": now_active,
            "reason": look.reason,
            "diff": look.diff,
            "statistic": look.statistic,
            "arms": self.trial_look["arms"],
            "behavior": behavior,
        }
        if users_liked_it_less:
            event["data_quarantined"] = self._quarantine(trial.candidate, look.reason)
        self.trial_decisions.append(event)
        self.trial_look = {}
        if look.outcome == "reject":
            log.warning("%s -> rejected %s, traffic back on %s", look.reason, trial.candidate, now_active)
        else:
            log.info("%s -> promoted %s", look.reason, trial.candidate)
        self._publish_status(force=True)
        return event

    def _quarantine(self, version: str, reason: str) -> dict | None:
        """Data rollback (``trainer.data_windows``): the records ``version`` learned from leave training.
        None when off, or when the version has no recorded window (not trained by this trainer)."""
        if not self.settings.quarantine_rejected_data:
            return None
        entry = self.data_windows.quarantine(version, reason)
        if entry is None:
            return None
        removed = self.buffer.remove_if(self.data_windows.is_quarantined)
        self.store.rewrite(self.buffer.records())
        self.quarantined_records += removed
        return {"since": entry["since"], "until": entry["until"], "records_removed": removed}

    def _live_behavior_guard(self, trial: str) -> tuple[dict[str, Any], str]:
        """(metrics, problem) of the behavior guard on what the two arms of ``trial`` served
        (``trainer.gate.live_arms_guard``, the gate's bounds): a candidate users liked no less can still have
        got there by gaming them (terse, empty, repetitive or off-topic answers). ``problem`` is '' when it
        passed or was skipped; the metrics say which."""
        if not self.gate_cfg.behavior_guard:
            return {"skipped": "RLHB_TRAINER_GATE__BEHAVIOR_GUARD=false"}, ""
        active, candidate = (self.live.answers_of_arm(trial, arm) for arm in ("active", "candidate"))
        if min(len(active), len(candidate)) < self.settings.ab_guard_min_answers:
            fewest = min(len(active), len(candidate))
            return {"skipped": f"{fewest} answers in an arm, fewer than {self.settings.ab_guard_min_answers}"}, ""
        from trainer.gate import live_arms_guard

        try:
            metrics, reasons = live_arms_guard(active, candidate, self.gate_cfg)
        except Exception as e:  # as in the gate: a candidate that cannot be checked is not promoted
            return {}, f"A/B live behavior guard could not compare the arms: {type(e).__name__}: {e}"
        if not reasons:
            return metrics, ""
        return metrics, "A/B live behavior guard, the arms' answers over the same period: " + "; ".join(
            r.removeprefix("behavior guard: ") for r in reasons
        )

    # ------------------------------------------------------------------ status
    def _stored_encoding(self):
        """The encoding the aggregator stored (the API serves its most preferred sentence), or None
        (inferred from the records) when Redis has none or cannot be read."""
        try:
            prefix = self.settings.redis_prefix
            return load_encoding(self.redis, prefix) if self.redis.exists(encoding_key(prefix)) else None
        except Exception as e:  # a round must not fail on this: the records carry their own encoding
            log.warning("stored behavior encoding unreadable (%s); inferring it from the records", e)
            return None

    def status(self) -> dict:
        return {
            "state": self._state,
            "pid": os.getpid(),
            "algorithm": self.settings.algorithm,
            "buffer": len(self.buffer),
            "records_seen": self.buffer.added,
            "records_reloaded": self.reloaded,
            "records_quarantined": self.quarantined_records,
            "data_quarantine": self.data_windows.quarantined[-10:],
            "new_records": self.new_records,
            "records_per_round": self.settings.records_per_round,
            "rounds_done": self.rounds_done,
            "round_running_s": time.time() - self._round_started if self._round is not None else 0.0,
            "active": self.registry.active(),
            "last_round": self.last_round,
            "guardrail": self.settings.guardrail,
            "guardrail_rollbacks": self.guardrail_rollbacks[-10:],
            "ab_share": self.settings.ab_share,
            "trial": self.trial_look,
            "trial_decisions": self.trial_decisions[-10:],
            "live_counts": {v: {"views": c[0], "likes": c[1]} for v, c in self.live.totals.items()},
            "updated_at": time.time(),
        }

    def _publish_status(self, force: bool = False, state: str | None = None) -> None:
        if state:
            self._state = state
        if not force and time.time() - self._last_status < 1.0:
            return
        self._last_status = time.time()
        try:
            self.redis.set(self.status_key, json.dumps(self.status(), default=str))
        except Exception as e:  # noqa: BLE001 - status is best effort
            log.debug("status not published: %s", e)
        self.progress.publish(self.status, force=force)


def read_status(redis, prefix: str) -> dict:
    """The trainer's last published status (``{}`` if none)."""
    raw = redis.get(f"{prefix}train:status")
    return json.loads(raw) if raw else {}


def read_rounds(redis, prefix: str) -> list[dict]:
    """Finished rounds, oldest first."""
    return [json.loads(r) for r in redis.lrange(f"{prefix}train:rounds", 0, -1)]
