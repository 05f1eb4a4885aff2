"""The drift verdict (issue 14 item 4): did the loop follow the users' new taste within two rounds? And the
poisoned round's: what did it do to the real users, and what caught it? Read from the versions the demo judged
on held-out questions."""

from __future__ import annotations

from rlhb.demo.report import drift_recovery, poison_verdict


def version(algorithm: str, round_no: int, likes: int, status: str = "published", n: int = 352) -> dict:
    return {"algorithm": algorithm, "round": round_no, "status": status, "likes": likes, "n": n,
            "like_rate": likes / n, "version": f"{algorithm}-r{round_no}"}  # fmt: skip


def test_recovery_is_the_first_later_round_significantly_above_the_drop():
    report = {
        "drift": "concise:thorough@2",
        "versions": [
            version("base", 0, 80),
            version("rlhb", 1, 140),  # before the drift (taste A)
            version("rlhb", 2, 40),  # trained on A's feedback, judged under B: the drop
            version("rlhb", 3, 52),  # not yet significant (p about 0.1)
            version("rlhb", 4, 75),  # significant
            version("rlhbc", 1, 120),
            version("rlhbc", 2, 40),
            version("rlhbc", 3, 90, status="rejected"),  # never served: does not count
            version("rlhbc", 4, 41),
            version("sft", 1, 100),
            version("sft", 2, 30, status="rejected"),
        ],
    }
    rows = {r["lane"]: r for r in drift_recovery(report)}
    assert rows["rlhb"]["recovered_at"] == 4 and rows["rlhb"]["before"] == 140 / 352
    assert rows["rlhb"]["base_new_taste"] is None  # no base row judged by the new taste in this report
    assert rows["rlhb"]["after"][3]["p_above_drift"] > 0.05 > rows["rlhb"]["after"][4]["p_above_drift"]
    assert rows["rlhb"]["verdict"].startswith("recovered at round 4: round 2 0.114 under the new taste")
    assert rows["rlhbc"]["recovered_at"] is None and set(rows["rlhbc"]["after"]) == {4}
    assert rows["rlhbc"]["verdict"].startswith("did not recover within two rounds")
    assert rows["sft"]["recovered_at"] is None and "no version of round 2 was published" in rows["sft"]["verdict"]
    assert drift_recovery({**report, "drift": ""}) == []


def test_a_drift_at_round_one_compares_with_base():
    report = {"drift": "concise:warm@1", "versions": [version("base", 0, 100), version("rlhb", 1, 50),
                                                      version("rlhb", 2, 90)]}  # fmt: skip
    (row,) = drift_recovery(report)
    assert row["before"] == 100 / 352 and row["recovered_at"] == 2


def test_the_verdict_names_base_judged_by_the_new_taste():
    base_new = {**version("base", 0, 60), "round_info": {"users": "thorough"}}
    report = {"drift": "concise:thorough@1",
              "versions": [{**version("base", 0, 80), "round_info": {"users": "concise"}}, base_new,
                           version("rlhb", 1, 40), version("rlhb", 2, 70)]}  # fmt: skip
    (row,) = drift_recovery(report)
    assert row["before"] == 80 / 352 and row["base_new_taste"] == 60 / 352 and row["recovered_at"] == 2
    assert "base's answers under the new taste 0.170" in row["verdict"]


def test_a_round_that_did_not_drop_has_nothing_to_recover_from():
    """E28's case: round R, trained under the old taste, already beats base's answers under the new one."""
    base_new = {**version("base", 0, 90), "round_info": {"users": "concise"}}
    held = {"drift": "example:concise@1",
            "versions": [{**version("base", 0, 40), "round_info": {"users": "example"}}, base_new,
                         version("rlhb", 1, 190), version("rlhb", 2, 195)]}  # fmt: skip
    (row,) = drift_recovery(held)
    assert row["dropped"] is False and row["above_base"] is True and row["held"] is True
    assert row["recovered_at"] is None
    assert row["verdict"].startswith("no drop to recover from, and the later rounds held it: round 1 0.540")

    fell = {**held, "versions": held["versions"][:3] + [version("rlhb", 2, 140)]}
    (row,) = drift_recovery(fell)
    assert row["held"] is False and row["verdict"].startswith("no drop to recover from, but a later round fell")

    dropped = {**held, "versions": held["versions"][:2] + [version("rlhb", 1, 50), version("rlhb", 2, 60)]}
    (row,) = drift_recovery(dropped)
    assert row["dropped"] is True and row["above_base"] is False
    assert row["verdict"].startswith("did not recover within two rounds")


def test_a_poisoned_round_that_hurts_names_what_caught_it():
    live = {**version("rlhb", 1, 18, status="rejected"), "round_info": {"outcome": "trial"}, "reason": "A/B: worse"}
    report = {"poison_round": 1, "versions": [version("base", 0, 84), live]}
    (row,) = poison_verdict(report)
    assert row["harmed"] and not row["helped"] and row["caught_by"] == "live A/B" and row["before"] == 84 / 352
    assert row["verdict"].startswith("caught (live A/B): worse for the real users") and "A/B: worse" in row["verdict"]
    gate = {**live, "round_info": {"outcome": "rejected"}, "reason": "ranking accuracy"}
    (row,) = poison_verdict({**report, "versions": [version("base", 0, 84), gate]})
    assert row["caught_by"] == "gate" and "rejected by the gate: ranking accuracy" in row["verdict"]
    (row,) = poison_verdict({**report, "versions": [version("base", 0, 84), version("rlhb", 1, 18)]})
    assert row["caught_by"] is None and row["verdict"].startswith("NOT caught: published")
    assert poison_verdict({**report, "poison_round": 0}) == []
    drifted = {**version("rlhb", 1, 18), "round_info": {"users": "warm"}}
    (row,) = poison_verdict({**report, "versions": [{**version("base", 0, 84), "round_info": {"users": "concise"}},
                                                    drifted]})  # fmt: skip
    assert "(judged by different users: warm vs concise)" in row["verdict"]


def test_a_poisoned_round_that_helps_says_the_lift_is_not_the_feedbacks():
    # E31: trained on inverted feedback, the version still lifted the real users
    report = {"poison_round": 1, "versions": [version("base", 0, 33, n=176), version("rlhb", 1, 97, "rejected", 176)]}
    (row,) = poison_verdict(report)
    assert row["helped"] and not row["harmed"]
    assert "no harm to catch" in row["verdict"] and "does not come from its users' feedback" in row["verdict"]


def test_a_later_poisoned_round_is_compared_with_the_version_it_would_replace():
    versions = [version("base", 0, 40), version("rlhb", 1, 120), version("rlhb", 2, 118, "rejected"),
                version("rlhb", 3, 60, "rejected")]  # fmt: skip
    (row,) = poison_verdict({"poison_round": 3, "versions": versions})
    assert row["before"] == 120 / 352 and row["harmed"]  # round 1 was active; round 2 was never published
    (row,) = poison_verdict({"poison_round": 2, "versions": versions})
    assert not row["harmed"] and not row["helped"] and row["verdict"].startswith("no significant effect")
