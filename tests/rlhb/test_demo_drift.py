"""The drift verdict (issue 14 item 4): did the loop follow the users' new taste within two rounds?
Read from the versions the demo published and judged on held-out questions."""

from __future__ import annotations

from rlhb.demo.report import drift_recovery


def version(algorithm: str, round_no: int, likes: int, status: str = "published", n: int = 352) -> dict:
    return {"algorithm": algorithm, "round": round_no, "status": status, "likes": likes, "n": n,
            "like_rate": likes / n}  # fmt: skip


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
