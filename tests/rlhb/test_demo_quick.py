"""``rlhb demo --quick``: the whole loop with the tiny model, through the real services
(API, aggregator and trainer processes, the real broker and Redis), for all three algorithms."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.behavior.encoding import least_preferred_sentence
from rlhb.demo import format_table, quick_config, run_demo
from rlhb.demo.config import EVAL_SEED_OFFSET
from rlhb.demo.judging import rejudge
from rlhb.simulate.driver import Served


@pytest.mark.slow
def test_quick_demo_runs_the_closed_loop(tmp_path, kafka_bootstrap, redis_url, tiny_model_dir, monkeypatch):
    import redis as redis_lib

    monkeypatch.setenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("RLHB_REDIS_URL", redis_url)
    monkeypatch.setenv("RLHB_STATE_DIR", str(tmp_path / "state"))
    cfg = quick_config(tmp_path / "demo", model_path=str(tiny_model_dir), base_traffic=32, eval_questions=6)
    report = run_demo(cfg)

    rows = {row["algorithm"]: row for row in report["versions"]}
    assert set(rows) == {"base", "rlhb", "rlhbc", "rlhf"}
    # Feedback went over HTTP, through the aggregator, into the first lane's trainer...
    assert report["lanes"]["rlhb"]["records_in_buffer"] >= 30
    # ...and the same logged history was replayed to the other lanes.
    assert report["lanes"]["rlhbc"]["replayed_records"] >= 30
    assert report["lanes"]["rlhf"]["replayed_records"] == report["lanes"]["rlhbc"]["replayed_records"]
    assert rows["base"]["n"] == 6
    for algo in ("rlhb", "rlhbc", "rlhf"):
        row = rows[algo]
        assert row["status"] in ("published", "rejected"), row
        assert row["round_info"]["train_records"] >= 8
        if row["status"] == "published":
            # Served by the API under its own version name, compared with the base.
            assert row["n"] == 6 and "vs_base" in row and 0 <= row["vs_base"]["p_fisher_one_sided"] <= 1
            assert "relevance" in row["quality"]
            guards = row["guards_vs_base"]  # against the base row's own quality, as the table shows it
            assert guards["clean"] == (not guards["failed"]) and "near_empty_change" in guards
    assert any(rows[a]["status"] == "published" for a in ("rlhb", "rlhbc", "rlhf"))
    for algo in ("rlhb", "rlhbc", "rlhf"):  # the last served version also answered under the least preferred sentence
        if rows[algo]["status"] == "published":
            gap = report["lanes"][algo]["behavior_gap"]
            assert gap["version"] == rows[algo]["version"] and gap["least_preferred"]["n"] == 6
            assert gap["paired_p_like"]["n_pairs"] == 6  # the same held-out answers under both sentences
            kept = [json.loads(x) for x in (cfg.out_dir / "behavior-gap.jsonl").read_text().splitlines()]
            mine = [k for k in kept if k["algorithm"] == algo]
            assert len(mine) == 6 and {k["version"] for k in mine} == {gap["version"]}
            assert {k["behavior"] for k in mine} == {least_preferred_sentence()}
    # D's held-out AUROC against the ceiling, on the very pairs the trainer measured it on (lanes with a D only)
    ceiling = rows["rlhb"]["d_ceiling"]
    assert ceiling["available"], ceiling
    assert ceiling["pairs"] >= 2 and ceiling["d_auroc"] == pytest.approx(ceiling["d_auroc_logged"], abs=1e-6)
    assert ceiling["d_auroc"] == pytest.approx(rows["rlhb"]["train_last"]["d_heldout_auroc"], abs=1e-6)
    assert ceiling["users"] == "concise" and ceiling["users_share"] == 1.0 and ceiling["traced_share"] == 1.0
    assert ceiling["judged_as_served"] == 1.0  # the users judge the logged answer as they did when it was served
    assert 0.5 < ceiling["expected_ceiling"] < 1.0 and 0.0 <= ceiling["ceiling_auroc"] <= 1.0
    if ceiling["ceiling_auroc"] > 0.5:
        assert ceiling["share_of_ceiling"] == pytest.approx(
            (ceiling["d_auroc"] - 0.5) / (ceiling["ceiling_auroc"] - 0.5)
        )
    assert "d_ceiling" not in rows["rlhbc"] and "d_ceiling" not in rows["rlhf"]
    assert report["side_by_side"] and report["side_by_side"][0]["base"]
    assert "like rate" in format_table(report)
    out = cfg.out_dir
    assert f"ceiling {ceiling['ceiling_auroc']:.3f} (expected" in (out / "report.md").read_text()
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert saved["total_seconds"] > 0 and saved["versions"]
    # The demo cleans its Redis keys (the machine's Redis is shared).
    client = redis_lib.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"rlhbdemo:{report['run_id']}:*", count=1000))
    client.close()


@pytest.mark.slow
def test_a_rejected_candidate_is_judged_offline_and_never_served(
    tmp_path, kafka_bootstrap, redis_url, tiny_model_dir, monkeypatch
):
    """The gate rejects every candidate (KL bound 1e-9): the demo still puts a like rate beside
    it, from answers it generated itself, while the lane's API never served that version."""
    monkeypatch.setenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("RLHB_REDIS_URL", redis_url)
    monkeypatch.setenv("RLHB_STATE_DIR", str(tmp_path / "state"))
    cfg = quick_config(
        tmp_path / "demo",
        model_path=str(tiny_model_dir),
        algorithms=("rlhf",),
        base_traffic=24,
        eval_questions=5,
        gate_config={"kl_bound": 1e-9, "reward_tolerance": 0.99},
    )
    report = run_demo(cfg)

    rows = {row["algorithm"]: row for row in report["versions"]}
    row = rows["rlhf"]
    assert row["status"] == "rejected" and "KL" in row["reason"], row
    assert row["n"] == 5 and 0 <= row["like_rate"] <= 1 and "vs_base" in row
    served = [json.loads(x) for x in (cfg.out_dir / "served.jsonl").read_text().splitlines()]
    offline = [s for s in served if s["algorithm"] == "rlhf"]
    assert len(offline) == 5 and all(s["adapter_version"] == row["version"] for s in offline)
    assert all(s["impression_id"] == "" and s["events_sent"] == 0 for s in offline)  # no impression: never served
    assert "never served" in (cfg.out_dir / "report.md").read_text()
    # The behavior-following gap of a rejected candidate is measured offline too.
    gap = report["lanes"]["rlhf"]["behavior_gap"]
    assert gap["version"] == row["version"] and gap["least_preferred"]["n"] == 5
    assert any(k.endswith("(rejected, never served)") for k in report["side_by_side"][0])
    manifest = json.loads((cfg.out_dir / "lane-rlhf" / "adapters" / "manifest.json").read_text())
    assert manifest["active"] == "base" and row["version"] not in json.dumps(manifest["history"])


@pytest.mark.slow
def test_quick_demo_with_drift_a_poisoned_round_and_ab_trials(
    tmp_path, kafka_bootstrap, redis_url, tiny_model_dir, monkeypatch
):
    """--drift concise:warm@2 --poison-round 2 --ab-share 0.5, two rounds, one lane: every
    candidate that passes the gate serves half of the next traffic until the live guardrail
    decides it. With the tiny random model like rates are noise: the plumbing is asserted."""
    from rlhb.demo.report import format_live_table

    monkeypatch.setenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("RLHB_REDIS_URL", redis_url)
    monkeypatch.setenv("RLHB_STATE_DIR", str(tmp_path / "state"))
    cfg = quick_config(
        tmp_path / "demo", model_path=str(tiny_model_dir), algorithms=("rlhb",), base_traffic=32, eval_questions=4,
        rounds=2, traffic_per_round=24, drift="concise:warm@2", poison_round=2, ab_share=0.5,
    )  # fmt: skip
    report = run_demo(cfg)

    live = {(row["algorithm"], row["round"]): row for row in report["live_rounds"]}
    assert live[("base", 0)]["users"] == "concise" and not live[("base", 0)]["poisoned"]
    rounds = {row["round"]: row for row in report["versions"] if row["algorithm"] == "rlhb"}
    assert set(rounds) == {1, 2}, rounds
    assert rounds[1]["round_info"]["users"] == "concise" and rounds[2]["round_info"]["users"] == "warm"  # the drift
    assert rounds[2]["round_info"]["poisoned"] and not rounds[1]["round_info"]["poisoned"]
    # round 2 is evaluated by the new taste, but every record it trained on was logged under the old one
    assert rounds[2]["d_ceiling"]["available"] and rounds[2]["d_ceiling"]["users"] == "concise", rounds[2]["d_ceiling"]
    trials = [r for r in (1, 2) if rounds[r]["round_info"].get("outcome") == "trial"]
    assert trials, "no candidate passed the gate: nothing was A/B tested"
    for r in trials:
        row = live[("rlhb", r)]
        assert row["decision"] in ("promoted", "rejected"), row  # the live guardrail decided it
        assert rounds[r]["round_info"]["guardrail"]["decision"] == row["decision"]
        assert rounds[r]["status"] == ("published" if row["decision"] == "promoted" else "rejected")
        assert row["arms"]["active"]["n"] > 0 and row["arms"]["candidate"]["n"] > 0  # both arms served
        # the arms hold what was served before the decision; the rest came after it, from the winner
        assert row["arms"]["active"]["n"] + row["arms"]["candidate"]["n"] + row["after_decision"] == row["n"]
        assert row["users"] == ("warm" if r == 2 else "concise") and row["poisoned"] == (r == 2)
        assert 0 <= row["ci_low"] <= row["like_rate"] <= row["ci_high"] <= 1
        guardrail = rounds[r]["round_info"]["guardrail"]
        if row["decision"] == "rejected" and "behavior guard" not in guardrail["reason"]:  # users liked it less
            assert guardrail["data_quarantined"]["records_removed"] > 0 and "data rollback" in row["reason"]
    assert "decision" in format_live_table(report)
    assert "Live traffic per round" in (cfg.out_dir / "report.md").read_text()
    (recovery,) = report["drift_recovery"]  # one verdict per lane, whatever the noise of the tiny model says
    (poisoned,) = report["poison_verdict"]  # the same for the poisoned round
    assert poisoned["lane"] == "rlhb" and poisoned["round"] == 2 and poisoned["verdict"]
    assert "The poisoned round" in (cfg.out_dir / "report.md").read_text()
    assert recovery["lane"] == "rlhb" and recovery["drift_round"] == 2 and recovery["verdict"]
    # base judged a second time, by the new taste: its answers, and the lifts after the drift are against it
    bases = {row["round_info"]["users"]: row for row in report["versions"] if row["algorithm"] == "base"}
    assert set(bases) == {"concise", "warm"} and recovery["base_new_taste"] == bases["warm"]["like_rate"]
    served = [json.loads(line) for line in (cfg.out_dir / "served.jsonl").read_text().splitlines()]
    by_version = {}
    for row in served:
        by_version.setdefault(row["version"], []).append(row)
    base_answers, rejudged = by_version["base"], by_version["base, judged by warm users"]
    assert [r["answer"] for r in base_answers] == [r["answer"] for r in rejudged]
    if rounds[2].get("n"):
        warm_likes = sum(r["asker_liked"] for r in rejudged)
        assert rounds[2]["vs_base"]["lift"] == pytest.approx(rounds[2]["like_rate"] - warm_likes / len(rejudged))
    # rejudging with the users who asked reproduces the API evaluation exactly: the same draw per answer
    fields = {f.name for f in dataclasses.fields(Served)}
    again = rejudge([Served(**{k: v for k, v in r.items() if k in fields}) for r in base_answers], "concise",
                    cfg.seed + EVAL_SEED_OFFSET)  # fmt: skip
    assert [(s.p_like, s.asker_liked, s.asker_disliked) for s in again] == [
        (r["p_like"], r["asker_liked"], r["asker_disliked"]) for r in base_answers
    ]
    assert f"- rlhb: {recovery['verdict']}" in (cfg.out_dir / "report.md").read_text()
    assert (cfg.out_dir / "live.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_variant_lane_runs_next_to_its_algorithm_and_each_lane_leaves_a_report(
    tmp_path, kafka_bootstrap, redis_url, tiny_model_dir, monkeypatch
):
    """``--algorithms rlhb,rlhb-frozen``: the second lane trains the same algorithm with its own
    overrides (frozen D) on the replayed records, and its report row names the variant; the report
    is written after the first lane too, so a run cut short keeps what it finished."""
    monkeypatch.setenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("RLHB_REDIS_URL", redis_url)
    monkeypatch.setenv("RLHB_STATE_DIR", str(tmp_path / "state"))
    cfg = quick_config(
        tmp_path / "demo", model_path=str(tiny_model_dir), algorithms=("rlhb", "rlhb-frozen", "rlhb-steer"),
        base_traffic=24, eval_questions=4,
    )  # fmt: skip
    cfg.algorithm_config["rlhb-steer"]["steer_learning_rate"] = 0.05  # steer far from the base in 2 steps
    report = run_demo(cfg)

    rows = {row["algorithm"]: row for row in report["versions"]}
    assert set(rows) == {"base", "rlhb", "rlhb-frozen", "rlhb-steer"} and report["complete"]
    # rlhb-steer's string overrides (kl_reference, steer_contrast_records) reached its trainer through the
    # environment; it steered before PPO and took the KL from the steered adapter (0 at the first batch)
    assert "steering steps before PPO" in rows["rlhb-steer"]["variant"]
    assert rows["rlhb-steer"]["variant"].endswith("gate KL bound 0.7)")  # lane_gate_defaults reached the label
    logged = [
        json.loads(line)
        for path in (cfg.out_dir / "lane-rlhb-steer" / "state" / "trainer-metrics").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert any(row.get("steer_steps") == 2 for row in logged)
    first = next(row for row in logged if row.get("iteration") == 0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-3)
    assert report["lanes"]["rlhb-frozen"]["replayed_records"] >= 20
    assert "frozen discriminator" in rows["rlhb-frozen"]["variant"] and "frozen" not in rows["rlhb"]["variant"]
    # The variant's own overrides reached its trainer (quick rlhb-frozen: 2 D warm-up steps; rlhb: none).
    assert (
        rows["rlhb-frozen"]["train_last"]["d_warmup_steps"] == 2 and "d_warmup_steps" not in rows["rlhb"]["train_last"]
    )
    assert "report so far (lanes rlhb)" in (cfg.out_dir / "demo.log").read_text()
