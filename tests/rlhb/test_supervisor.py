"""The supervisor of `rlhb up` (rlhb/supervisor.py), with real processes only.

Fast: the backoff and the per-minute cap with a child that always crashes, the configuration
error that is never restarted, SIGTERM to a supervisor that stops every child (one of them
ignores SIGTERM; one has a child of its own) and leaves no orphan.

Slow: the real `rlhb up` (tiny model, real broker and Redis): kill -9 the aggregator, then the
trainer; the API answers throughout, both come back with new PIDs and work, and the
aggregator's counts in Redis equal exactly the feedback the API accepted (202), before,
during and after the kills, a retried event included. Then SIGTERM: no process left.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from core.infra.ports import free_port
from rlhb.supervisor import RestartPolicy, Supervisor, describe_exit
from service.aggregator.redis_state import AggregatorStore
from tests.helpers.e2e import deployment_env
from tests.helpers.trainer_loop import trainer_env, wait_for
from trainer.loop import read_status

PY = sys.executable
CRASH = [PY, "-c", "import sys; sys.exit(1)"]
SLEEP = [PY, "-c", "import time; time.sleep(120)"]


# ------------------------------------------------------------------ process table (Linux /proc)
def alive(pid: int) -> bool:
    """Running (a zombie or a missing /proc entry is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> dict[int, list[str]]:
    """Live direct children of ``pid``: child pid -> argv."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found


# ------------------------------------------------------------------ fast
def test_backoff_doubles_from_the_initial_delay_up_to_the_cap():
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exit status 3"


class RecordingSupervisor(Supervisor):
    """Remembers when each child was (re)started."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spawns: dict[str, list[float]] = {}

    def _spawn(self, child):
        super()._spawn(child)
        self.spawns.setdefault(child.name, []).append(time.monotonic())


def supervise_until(sup: Supervisor, done, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, {c.name: c for c in sup.children.values()}
        sup.tick()
        time.sleep(0.01)


def test_crashing_child_restarts_with_doubling_backoff_then_is_given_up_while_the_other_serves(caplog):
    caplog.set_level(logging.INFO, logger="rlhb.supervisor")
    policy = RestartPolicy(initial_backoff_s=0.2, max_backoff_s=0.4, max_restarts=3, window_s=60)
    sup = RecordingSupervisor({"crash": CRASH, "steady": SLEEP}, policy=policy, grace_s=5)
    sup.start()
    try:
        supervise_until(sup, lambda: sup.children["crash"].gave_up)
        steady_pid = sup.children["steady"].pid
        for _ in range(30):  # given up means given up: no further start
            sup.tick()
            time.sleep(0.01)
        starts = sup.spawns["crash"]
        assert len(starts) == 1 + 3  # the first start and max_restarts restarts
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        for gap, backoff in zip(gaps, [0.2, 0.4, 0.4], strict=True):  # 0.2, 0.4, then capped at 0.4
            assert backoff <= gap < backoff + 1.0, gaps
        assert sup.spawns["steady"] == sup.spawns["steady"][:1] and steady_pid and alive(steady_pid)
        assert not sup.all_gave_up
        messages = [r.getMessage() for r in caplog.records]
        assert sum("crash" in m and "exited unexpectedly: exit status 1" in m for m in messages) == 3
        assert sum(m.startswith("restarted crash") for m in messages) == 3
        gave_up = [r for r in caplog.records if r.getMessage().startswith("GAVE UP on crash")]
        assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR
        assert "3 restarts in the last 60s" in gave_up[0].getMessage()
        assert "Still serving: steady" in gave_up[0].getMessage()
    finally:
        sup.stop()
    assert not alive(steady_pid)


def test_configuration_error_exit_is_never_restarted(caplog):
    sup = RecordingSupervisor({"bad": [PY, "-c", "import sys; sys.exit(2)"]}, policy=RestartPolicy(0.01))
    sup.start()
    try:
        supervise_until(sup, lambda: sup.children["bad"].gave_up)
    finally:
        sup.stop()
    assert len(sup.spawns["bad"]) == 1 and sup.all_gave_up
    assert "configuration error" in caplog.text


SUPERVISED_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from rlhb.supervisor import Supervisor
    logging.basicConfig(level=logging.INFO)
    py = sys.executable
    sys.exit(Supervisor({
        "sleeper": [py, "-c", "import time; time.sleep(120)"],
        # ignores SIGTERM: only the SIGKILL after the grace period ends it
        "stubborn": [py, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
        # starts a grandchild: the signal to the child's process group must reach it too
        "parent": [py, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                   "'import time; time.sleep(120)']); time.sleep(120)"],
    }, grace_s=1.0).run())
    """
)


def test_sigterm_to_the_supervisor_stops_every_child_and_grandchild(tmp_path):
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:
        sup = subprocess.Popen([PY, "-c", SUPERVISED_SCRIPT], stdout=out, stderr=subprocess.STDOUT)
    try:
        kids = wait_for(lambda: len(children_of(sup.pid)) == 3 and children_of(sup.pid), 30, "three children")
        parent = next(pid for pid, argv in kids.items() if "subprocess" in argv[-1])
        grandkids = wait_for(lambda: children_of(parent), 30, "the grandchild")
        time.sleep(0.5)  # let "stubborn" install its SIGTERM handler
        t0 = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 0, log.read_text()
        assert time.monotonic() - t0 < 10
    finally:
        if sup.poll() is None:
            sup.kill()
    assert [pid for pid in [*kids, *grandkids] if alive(pid)] == []
    text = log.read_text()
    assert "SIGTERM: stopping every process" in text and "stubborn" in text and "ignored SIGTERM" in text


# ------------------------------------------------------------------ slow: the real `rlhb up`
class Feedback:
    """Queries and feedback over HTTP; remembers what the API counts per impression: one client,
    so each count kind once per impression (the API's once-per-(impression, client) rule; a retry
    or a repeat is answered as a duplicate and never reaches the topic)."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=30, headers={"X-Client-Id": "e2e-test-client-01"})
        self.accepted: dict[str, dict[str, float]] = {}
        self.counted: set[tuple[str, str]] = set()

    def query(self, question: str) -> str:
        try:
            response = self.http.post("/v1/query", json={"query": question, "max_tokens": 4})
        except httpx.HTTPError as e:
            raise AssertionError(f"the API did not answer: {type(e).__name__}: {e}") from e
        assert response.status_code == 200, response.text
        iid = response.json()["impression_id"]
        self.accepted.setdefault(iid, {})
        return iid

    def send(self, events: list[dict]) -> None:
        try:
            response = self.http.post("/v1/feedback", json={"events": events})
        except httpx.HTTPError as e:
            raise AssertionError(f"the API did not take feedback: {type(e).__name__}: {e}") from e
        assert response.status_code == 202, response.text
        new = 0
        for ev in events:
            if (ev["impression_id"], ev["kind"]) not in self.counted:
                counts = self.accepted[ev["impression_id"]]
                counts[ev["kind"]] = counts.get(ev["kind"], 0.0) + 1.0
                self.counted.add((ev["impression_id"], ev["kind"]))
                new += 1
        body = response.json()
        assert body["accepted"] == new and body.get("duplicates", 0) == len(events) - new, (body, new)

    def react(self, iids, kinds=("view", "like")) -> list[dict]:
        events = [{"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": kind} for iid in iids for kind in kinds]
        self.send(events)
        return events


def supervised_children(up_pid: int) -> dict[str, int]:
    """`rlhb up`'s children by process name (api, aggregator, trainer)."""
    return {argv[-1]: pid for pid, argv in children_of(up_pid).items() if argv[-2:-1] == ["rlhb.cli"]}


@pytest.mark.slow
def test_rlhb_up_restarts_killed_aggregator_and_trainer_without_losing_or_double_counting_feedback(
    tmp_path, kafka_bootstrap, redis_url, redis_prefix, redis_client, unique_topics, tiny_model_dir
):
    port = free_port()
    env = deployment_env(
        trainer_env(
            bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
            adapter_dir=tmp_path / "adapters", state_dir=tmp_path / "state", model_dir=tiny_model_dir,
            records_per_round=10_000,  # no training round during the test: it is about processes
        ),
        port=port, prefix=redis_prefix,
    )  # fmt: skip
    log = tmp_path / "up.log"
    argv = [PY, "-m", "rlhb.cli", "up", "--port", str(port), "--backoff", "0.5", "--grace", "20"]
    with open(log, "wb") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    store = AggregatorStore(redis_client, redis_prefix)
    fb = Feedback(f"http://127.0.0.1:{port}")
    timings: dict[str, float] = {}

    def logs() -> str:
        return log.read_text(errors="replace")[-6000:]

    def api_ready():
        assert up.poll() is None, logs()
        try:
            return fb.http.get("/readyz", timeout=5).json().get("status") == "ready"
        except (httpx.HTTPError, ValueError):
            return False

    def counts_match():
        assert up.poll() is None, logs()
        return all(store.counts(iid) == want for iid, want in fb.accepted.items())

    def trainer_idle(pid: int):
        status = read_status(redis_client, redis_prefix)
        return status.get("pid") == pid and status.get("state") == "idle"

    def serve_while(done, what: str, timeout_s: float = 120) -> int:
        """Ask the API once per ~0.3 s until ``done()``; every answer must be a 200."""
        deadline, answered = time.monotonic() + timeout_s, 0
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs()}"
            fb.query(f"Question {answered} while waiting for {what}?")
            answered += 1
            time.sleep(0.3)
        return answered

    try:
        wait_for(api_ready, 180, "the API behind `rlhb up`", interval=0.5)
        before = wait_for(lambda: len(supervised_children(up.pid)) == 3 and supervised_children(up.pid), 30, "3")
        wait_for(lambda: trainer_idle(before["trainer"]), 120, "the trainer idle", interval=0.5)

        # ---- feedback counted while everything runs
        iids = [fb.query(f"What is {n} plus {n}?") for n in range(4)]
        fb.react(iids)
        wait_for(counts_match, 60, "the first feedback counted", interval=0.3)

        # ---- kill -9 the aggregator right after more feedback (possibly polled, not committed)
        in_flight = fb.react(iids, kinds=("click",))
        os.kill(before["aggregator"], signal.SIGKILL)
        t0 = time.monotonic()
        during = [fb.query("Who wrote Hamlet?") for _ in range(2)]  # the API answers and accepts feedback
        fb.react(during)
        fb.send(in_flight[:2])  # a client's retry of accepted events: same event ids
        answered = serve_while(
            lambda: supervised_children(up.pid).get("aggregator") not in (None, before["aggregator"]),
            "the aggregator restarted",
        )
        timings["aggregator_back_s"] = time.monotonic() - t0
        wait_for(counts_match, 90, "every accepted event counted once by the new aggregator", interval=0.3)
        timings["aggregator_counting_again_s"] = time.monotonic() - t0
        assert answered >= 1

        # ---- kill -9 the trainer
        os.kill(before["trainer"], signal.SIGKILL)
        t0 = time.monotonic()
        new_trainer = {}

        def trainer_back():
            pid = supervised_children(up.pid).get("trainer")
            if pid in (None, before["trainer"]) or not trainer_idle(pid):
                return False
            new_trainer["pid"] = pid
            return True

        answered += serve_while(trainer_back, "the trainer restarted and idle")
        timings["trainer_back_s"] = time.monotonic() - t0

        # ---- after both restarts: new PIDs, the API kept its PID, feedback still counted exactly
        after = supervised_children(up.pid)
        assert after["api"] == before["api"]
        assert after["aggregator"] != before["aggregator"] and after["trainer"] == new_trainer["pid"]
        assert not alive(before["aggregator"]) and not alive(before["trainer"])
        fb.react([fb.query("What is a wavelength?"), *iids])
        wait_for(counts_match, 60, "feedback after both restarts counted", interval=0.3)
        time.sleep(2)  # a late duplicate would show up now
        assert counts_match()
        n_events = sum(sum(c.values()) for c in fb.accepted.values())
        assert store.all_counts() == {iid: c for iid, c in fb.accepted.items() if c}
        text = log.read_text(errors="replace")  # all of it: the API logs every request
        assert "restarted aggregator" in text and "restarted trainer" in text and "killed by SIGKILL" in text

        # ---- SIGTERM to `rlhb up`: everything stops, nothing is left behind
        t0 = time.monotonic()
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, logs()
        timings["stop_s"] = time.monotonic() - t0
        assert [pid for pid in after.values() if alive(pid)] == []
        print(f"\nsupervisor timings: {timings}; {answered} answers while waiting; {n_events} events counted")
    finally:
        fb.http.close()
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
