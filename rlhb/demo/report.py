"""The report: ``summarize`` (one version's like rate, Wilson interval, test against base and
quality), ``build_report`` (all versions, power analysis, answers side by side), ``format_table``
and ``write_report`` (console, report.json, report.md, served.jsonl and the plot)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from rlhb.demo.config import ALGORITHM_LABELS, DemoConfig, lane_algorithm
from rlhb.demo.judging import VersionResult
from rlhb.demo.plot import plot, plot_live


def summarize(vr: VersionResult, base: VersionResult | None, relevance: bool = True) -> dict:
    from rlhb.evaluation.quality import quality_report
    from rlhb.evaluation.stats import compare_to_base, wilson_interval

    row = {
        "algorithm": vr.algorithm,
        "label": ALGORITHM_LABELS.get(lane_algorithm(vr.algorithm), vr.algorithm),
        "version": vr.version,
        "round": vr.round,
        "status": vr.status,
        "reason": vr.reason,
        "train_seconds": round(vr.train_seconds, 1),
        "evaluated_at_s": round(vr.evaluated_at, 1),
    }
    if vr.round_info:
        row["round_info"] = {
            k: vr.round_info.get(k)
            for k in ("records", "train_records", "heldout_records", "gate", "parent", "train_seconds", "seconds")
        }
        for k in ("outcome", "users", "poisoned", "guardrail", "ab_share"):  # live trials, drift, poisoning
            if k in vr.round_info:
                row["round_info"][k] = vr.round_info[k]
    if vr.d_ceiling:
        row["d_ceiling"] = vr.d_ceiling
    first = vr.train_metrics[0] if vr.train_metrics else {}  # a round's one-off numbers come with iteration 0
    if "finish_priors_on" in first:
        row["finish_priors"] = {k: v for k, v in first.items() if k.startswith("finish_")}
    if not vr.served:
        return row
    k, n = sum(s.asker_liked for s in vr.served), len(vr.served)
    ci = wilson_interval(k, n)
    row.update(
        likes=k,
        n=n,
        like_rate=ci.rate,
        ci_low=ci.low,
        ci_high=ci.high,
        mean_p_like=sum(s.p_like for s in vr.served) / n,
        degenerate_share=sum(bool(s.degenerate) for s in vr.served) / n,
    )
    if base is not None and base.served and vr is not base:
        kb, nb = sum(s.asker_liked for s in base.served), len(base.served)
        row["vs_base"] = compare_to_base(k, n, kb, nb).as_dict()
    quality = quality_report([s.question for s in vr.served], [s.answer for s in vr.served], relevance=relevance)
    row["quality"] = quality.as_dict()
    if vr.train_metrics:
        last = vr.train_metrics[-1]
        row["train_last"] = {k: v for k, v in last.items() if isinstance(v, int | float)}
    return row


def paired_p_like(most: list, least: list) -> dict:
    """The gap in the simulated users' true like probability, paired by held-out answer (``index``: the same
    question and draw under both sentences): mean difference and a one-sided paired t-test (H1: most > least).

    A second reading of the same gap, next to the like-rate test, not instead of it: each like is one Bernoulli
    draw from ``p_like``, and pairing removes the questions' own difficulty, so this test sees a policy that
    follows the sentence with less noise. Only a simulation knows ``p_like``; with real users the like-rate
    test is the one that carries over. p is None when every pair differs by the same amount (t undefined)."""
    from scipy.stats import ttest_rel

    a, b = {s.index: s.p_like for s in most}, {s.index: s.p_like for s in least}
    keys = sorted(a.keys() & b.keys())
    out: dict = {"n_pairs": len(keys)}
    if len(keys) < 2:
        return out
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    out["mean_diff"] = sum(x) / len(x) - sum(y) / len(y)
    result = ttest_rel(x, y, alternative="greater")
    out["t"] = None if math.isnan(result.statistic) else float(result.statistic)
    out["p_one_sided"] = None if math.isnan(result.pvalue) else float(result.pvalue)
    return out


def behavior_gap(most: list, least: list) -> dict:
    """The same version under the most vs the least preferred sentence: both like rates, the gap and
    its one-sided two-proportion z-test (H1: most > least), the users' mean true like probability, and
    the same gap in true like probability paired by answer (``paired_p_like``)."""
    from rlhb.evaluation.stats import two_proportion_z, wilson_interval

    k1, n1 = sum(s.asker_liked for s in most), len(most)
    k0, n0 = sum(s.asker_liked for s in least), len(least)
    z, p_one, _ = two_proportion_z(k1, n1, k0, n0)
    most_ci, least_ci = wilson_interval(k1, n1), wilson_interval(k0, n0)
    return {
        "most_preferred": {"like_rate": most_ci.rate, "ci": [most_ci.low, most_ci.high], "n": n1},
        "least_preferred": {"like_rate": least_ci.rate, "ci": [least_ci.low, least_ci.high], "n": n0},
        "gap": most_ci.rate - least_ci.rate,
        "z": z,
        "p_one_sided": p_one,
        "mean_p_like_most": sum(s.p_like for s in most) / max(1, n1),
        "mean_p_like_least": sum(s.p_like for s in least) / max(1, n0),
        "paired_p_like": paired_p_like(most, least),
    }


def format_paired(paired: dict | None) -> str:
    if not paired or paired.get("p_one_sided") is None:
        return ""
    return (
        f"; paired by answer: {paired['mean_diff']:+.3f}, one-sided p {paired['p_one_sided']:.3g} "
        f"({paired['n_pairs']} pairs)"
    )


def format_gaps(report: dict) -> list[str]:
    """One line per lane with a measured behavior-following gap."""
    lines = []
    for lane, info in report.get("lanes", {}).items():
        g = info.get("behavior_gap")
        if g:
            lines.append(
                f"{lane} {g['version']}: most preferred {g['most_preferred']['like_rate']:.3f} vs least preferred "
                f"{g['least_preferred']['like_rate']:.3f} (n={g['least_preferred']['n']}): gap {g['gap']:+.3f}, "
                f"one-sided p {g['p_one_sided']:.3g}; mean true p_like {g['mean_p_like_most']:.3f} vs "
                f"{g['mean_p_like_least']:.3f}" + format_paired(g.get("paired_p_like"))
            )
    return lines


def format_finish_priors(report: dict) -> list[str]:
    """One line per round whose lane decides its finish priors from its records (``finish_priors``)."""
    lines = []
    for row in report["versions"]:
        f = row.get("finish_priors")
        if f:
            lines.append(
                f"{row['label']} {row['version']} (round {row['round']}): {'on' if f['finish_priors_on'] else 'OFF'}: "
                f"reward {f['finish_reward_gap']:+.3f} higher for {int(f['finish_records_finished'])} finished "
                f"answers than for {int(f['finish_records_unfinished'])} stopped mid-sentence "
                f"(Welch t {f['finish_t']:+.2f}, one-sided p {f['finish_p']:.2g})"
            )
    return lines


def format_ceilings(report: dict) -> list[str]:
    """One line per RLHB round: D's held-out AUROC against the ceiling on the same pairs, or why there is none."""
    from rlhb.demo.ceiling import format_ceiling

    return [
        f"{row['label']} {row['version']} (round {row['round']}): {format_ceiling(row['d_ceiling'])}"
        for row in report["versions"]
        if row.get("d_ceiling")
    ]


def guard_intervals(candidate: VersionResult, base: VersionResult) -> dict:
    """The guards' paired 95% intervals (``rlhb.evaluation.quality.paired_guard_intervals``) over the held-out
    answers both versions gave to the same question and draw (``index``; base's answers are the same ones when
    it is judged again under a drift)."""
    from rlhb.evaluation.quality import paired_guard_intervals

    base_answers = {(s.question, s.index): s.answer for s in base.served}
    pairs = [(s.question, base_answers[s.question, s.index], s.answer) for s in candidate.served
             if (s.question, s.index) in base_answers]  # fmt: skip
    if not pairs:
        return {"pairs": 0, "relevance_change": None, "repetition_change": None, "near_empty": None}
    questions, base_side, candidate_side = zip(*pairs, strict=True)
    return paired_guard_intervals(questions, base_side, candidate_side)


def format_guard_intervals(report: dict) -> list[str]:
    """One line per judged version: each guard's change against base with its paired 95% interval, then the
    bar's verdict on the point estimates (``format_guards``)."""

    def change(point: float | None, ci: list | None) -> str:
        if point is None:
            return "n/a"
        return f"{point:+.1%}" + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")

    lines = []
    for row in report["versions"]:
        guards = row.get("guards_vs_base")
        if not guards or "intervals" not in guards:
            continue
        ci = guards["intervals"]
        empty = ci.get("near_empty") or {}
        lines.append(
            f"{row['label']} {row['version']} (round {row['round']}): relevance "
            f"{change(guards.get('relevance_change'), ci.get('relevance_change'))}, repetition "
            f"{change(guards.get('repetition_change'), ci.get('repetition_change'))}, near-empty "
            f"{empty.get('base', '?')} -> {empty.get('candidate', '?')} of {ci.get('pairs', 0)}: "
            f"{format_guards(guards)}"
        )
    return lines


def build_report(cfg: DemoConfig, results: list[VersionResult], phases: dict, total: float, model_path: str) -> dict:
    from rlhb.evaluation.quality import guards_against_base
    from rlhb.evaluation.stats import power_at_n, required_n_per_arm

    base = next((r for r in results if r.algorithm == "base"), None)
    # Under drift base is judged once per taste (``rlhb.demo.judging.rejudge``): each version's lift is
    # against base judged by the users that judged it, never across tastes.
    bases: dict[str, VersionResult] = {}
    for r in results:
        if r.algorithm == "base":
            bases.setdefault(r.round_info.get("users", cfg.users_at(0)), r)
    own_bases = [bases.get(r.round_info.get("users", cfg.users_at(r.round)), base) for r in results]
    rows = [summarize(r, b) for r, b in zip(results, own_bases, strict=True)]
    quality_of = {id(r): row.get("quality") for r, row in zip(results, rows, strict=True)}
    r_of = {id(row): r for r, row in zip(results, rows, strict=True)}
    for row, b in zip(rows, own_bases, strict=True):  # the issue's bar on quality, against the same base as the lift
        if "vs_base" in row and quality_of.get(id(b)):
            row["guards_vs_base"] = guards_against_base(row["quality"], quality_of[id(b)])
            row["guards_vs_base"]["intervals"] = guard_intervals(r_of[id(row)], b)
    for row, r in zip(rows, results, strict=True):  # name the variant for what it is (d_frozen: paper 6.4)
        row["variant"] = cfg.label(r.algorithm)
    power = {}
    if base is not None and base.served:
        p0 = sum(s.asker_liked for s in base.served) / len(base.served)
        n = len(base.served)
        p0c = min(max(p0, 0.01), 0.98)
        power = {
            "base_rate": p0,
            "n_per_arm": n,
            "power_for_lift": {f"+{d:.2f}": power_at_n(p0c, min(0.99, p0c + d), n) for d in (0.05, 0.1, 0.15)},
            "n_needed_for_lift_0.10_at_80pct": required_n_per_arm(p0c, min(0.99, p0c + 0.1)),
        }
    side_by_side = []
    finals = {}
    for r in results:
        if r.algorithm != "base" and r.served:
            finals[r.algorithm] = r
    if base is not None and base.served:
        by_q = {}
        for s in base.served:
            by_q.setdefault(s.question, s)
        for q in list(by_q)[: cfg.show_answers]:
            entry = {"question": q, "base": by_q[q].answer}
            for algo, r in finals.items():
                match = next((s for s in r.served if s.question == q), None)
                label = f"{algo}:{r.version}" + (" (rejected, never served)" if r.status == "rejected" else "")
                entry[label] = match.answer if match else ""
            side_by_side.append(entry)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model_path": model_path,
        "total_seconds": round(total, 1),
        "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
        "versions": rows,
        "power": power,
        "side_by_side": side_by_side,
    }


def drift_recovery(report: dict) -> list[dict]:
    """Per lane, whether the loop followed the users' new taste (issue 14 item 4; ``report["drift"]`` is
    ``A:B@R``). The version published at round R was trained on feedback given under taste A and is judged
    under B: that is the drop. The versions published in rounds R+1 and R+2 were trained on traffic served
    under B. The lane recovered at the first of them whose held-out like rate is above round R's with a
    one-sided two-proportion p < 0.05. A lane whose round-R candidate was not published (no version judged
    under B at the drop) has no verdict. Rows: lane, drift round, the rates before (round R-1, taste A, base
    when R = 1), at the drop and after it, and ``recovered_at`` (a round, or None).

    A drift need not cause a drop: every preset rewards finished answers, so a round trained under taste A can
    already suit B better than base does (E14, E28). With base's answers judged under B in the report, the
    entry says whether round R fell below them (``dropped``: one-sided p < 0.05) or rose above them
    (``above_base``); when it did not drop, "recovered" is moot and the verdict says so, and whether the later
    rounds held round R's rate (``held``: none of them significantly below it) or fell."""
    from rlhb.evaluation.stats import two_proportion_z

    if not report.get("drift"):
        return []
    at = int(report["drift"].rsplit("@", 1)[1])
    published = {}
    for row in report["versions"]:
        if "n" in row and (row["status"] == "published" or row["algorithm"] == "base"):
            published[(row["algorithm"], row["round"])] = row
    base = next((r for r in report["versions"] if r["algorithm"] == "base" and "n" in r), None)
    new_taste = report["drift"].rsplit("@", 1)[0].split(":", 1)[1]
    base_after = next(
        (
            r
            for r in report["versions"][1:]
            if r["algorithm"] == "base" and "n" in r and r.get("round_info", {}).get("users") == new_taste
        ),
        None,
    )
    out = []
    for lane in dict.fromkeys(r["algorithm"] for r in report["versions"] if r["algorithm"] != "base"):
        drop = published.get((lane, at))
        before = published.get((lane, at - 1)) or (base if at == 1 else None)
        entry = {"lane": lane, "drift_round": at, "before": before and before["like_rate"],
                 "at_drift": drop and drop["like_rate"], "base_new_taste": base_after and base_after["like_rate"],
                 "after": {}, "recovered_at": None, "dropped": None, "above_base": None, "held": None}  # fmt: skip
        if drop is None:
            entry["verdict"] = f"no version of round {at} was published and judged under the new taste"
            out.append(entry)
            continue
        for r in (at + 1, at + 2):
            row = published.get((lane, r))
            if row is None:
                continue
            _, p, _ = two_proportion_z(row["likes"], row["n"], drop["likes"], drop["n"])
            _, p_below, _ = two_proportion_z(drop["likes"], drop["n"], row["likes"], row["n"])
            entry["after"][r] = {"like_rate": row["like_rate"], "p_above_drift": p, "p_below_drift": p_below}
            if p < 0.05 and entry["recovered_at"] is None:
                entry["recovered_at"] = r
        if base_after is not None and "likes" in base_after:
            _, p_down, _ = two_proportion_z(base_after["likes"], base_after["n"], drop["likes"], drop["n"])
            _, p_up, _ = two_proportion_z(drop["likes"], drop["n"], base_after["likes"], base_after["n"])
            entry["dropped"], entry["above_base"] = p_down < 0.05, p_up < 0.05
        if entry["after"]:
            entry["held"] = all(a["p_below_drift"] >= 0.05 for a in entry["after"].values())
        rates = ", ".join(
            f"round {r} {a['like_rate']:.3f} (p {a['p_above_drift']:.2g})" for r, a in entry["after"].items()
        )
        if entry["recovered_at"]:
            head = f"recovered at round {entry['recovered_at']}"
        elif entry["dropped"] is False:
            head = "no drop to recover from"
            if entry["held"] is not None:
                head += ", and the later rounds held it" if entry["held"] else ", but a later round fell below it"
        else:
            head = "did not recover within two rounds"
        entry["verdict"] = (
            head
            + f": round {at} {drop['like_rate']:.3f} under the new taste"
            + (f" (before the drift {before['like_rate']:.3f})" if before else "")
            + (f"; base's answers under the new taste {base_after['like_rate']:.3f}" if base_after else "")
            + (f"; then {rates}" if rates else "; no later version was published")
        )
        out.append(entry)
    return out


def poison_verdict(report: dict) -> list[dict]:
    """Per lane, what the poisoned round (``report["poison_round"]``: its feedback arrived with likes and dislikes
    swapped) did to the real users, and what caught it (issue 14 item 4). Its version, judged by the real users on
    the held-out questions (offline when never served), is compared with the version it would have replaced: the
    lane's latest published version of an earlier round, or base. ``harmed`` / ``helped``: one-sided
    two-proportion p < 0.05 below / above it. ``caught_by``: "live A/B" (rejected after a trial), "gate" (rejected
    before serving), or None (published).

    A poisoned round that *helped* the real users is a finding about the lane, not the guardrail: trained on what
    its users dislike, it still moved toward what they like, so its lift comes from its priors (what the reward
    says whatever the feedback), not from the feedback (E31). Rows: lane, round, the two like rates, p-values,
    ``caught_by``, the reason, ``verdict``."""
    from rlhb.evaluation.stats import two_proportion_z

    at = int(report.get("poison_round") or 0)
    if not at:
        return []
    judged = [r for r in report["versions"] if "n" in r]
    base = next((r for r in judged if r["algorithm"] == "base"), None)
    out = []
    for lane in dict.fromkeys(r["algorithm"] for r in judged if r["algorithm"] != "base"):
        poisoned = next((r for r in judged if r["algorithm"] == lane and r["round"] == at), None)
        earlier = [r for r in judged if r["algorithm"] == lane and r["round"] < at and r["status"] == "published"]
        before = max(earlier, key=lambda r: r["round"]) if earlier else base
        entry = {"lane": lane, "round": at, "like_rate": None, "before": None, "p_below": None, "p_above": None,
                 "harmed": None, "helped": None, "caught_by": None, "reason": ""}  # fmt: skip
        if poisoned is None or before is None:
            entry["verdict"] = f"no version of round {at} was judged"
            out.append(entry)
            continue
        _, p_below, _ = two_proportion_z(before["likes"], before["n"], poisoned["likes"], poisoned["n"])
        _, p_above, _ = two_proportion_z(poisoned["likes"], poisoned["n"], before["likes"], before["n"])
        trial = poisoned.get("round_info", {}).get("outcome") == "trial"
        caught_by = None if poisoned["status"] == "published" else ("live A/B" if trial else "gate")
        entry.update(like_rate=poisoned["like_rate"], before=before["like_rate"], p_below=p_below, p_above=p_above,
                     harmed=p_below < 0.05, helped=p_above < 0.05, caught_by=caught_by,
                     reason=poisoned.get("reason", ""))  # fmt: skip
        rates = (
            f"{poisoned['like_rate']:.3f} against {before['like_rate']:.3f} for {before['version']} "
            f"(one-sided p {min(p_below, p_above):.2g})"
        )
        fate = f"rejected by the {caught_by}: {entry['reason']}" if caught_by else "published"
        tastes = [row.get("round_info", {}).get("users") for row in (poisoned, before)]
        if all(tastes) and tastes[0] != tastes[1]:  # a drift between them: the rates are not comparable
            rates += f" (judged by different users: {tastes[0]} vs {tastes[1]})"
        if entry["harmed"]:
            head = f"caught ({caught_by})" if caught_by else "NOT caught: published"
            entry["verdict"] = f"{head}: worse for the real users, {rates}" + (f"; {fate}" if caught_by else "")
        elif entry["helped"]:
            entry["verdict"] = (
                f"no harm to catch: better for the real users though trained on inverted feedback, {rates}; "
                f"this lane's lift does not come from its users' feedback; {fate}"
            )
        else:
            entry["verdict"] = f"no significant effect on the real users, {rates}; {fate}"
        out.append(entry)
    return out


def format_guards(guards: dict | None) -> str:
    """``guards_vs_base`` in a few words: "clean", or the guards past the bar."""
    if not guards:
        return ""
    return "clean" if guards["clean"] else "FAILED: " + "; ".join(guards["failed"])


def format_table(report: dict) -> str:
    from rlhb.evaluation.quality import NEAR_EMPTY_WORDS

    head = (
        f"{'algorithm':<18}{'version':<40}{'status':<10}{'n':>5}{'like rate':>10}{'95% CI':>16}"
        f"{'lift':>8}{'p (z)':>9}{'p (Fisher)':>11}{'sig':>5}{'relev.':>8}{'rep3':>7}{'words':>7}{'cut':>6}{'empty':>7}"
        "  guards vs base"
    )
    lines = [head, "-" * len(head)]
    for row in report["versions"]:
        if "n" not in row:
            lines.append(f"{row['label']:<18}{row['version'][:39]:<40}{row['status']:<10}  ({row.get('reason', '')})")
            continue
        vs = row.get("vs_base", {})
        q = row.get("quality", {})
        lines.append(
            f"{row['label']:<18}{row['version'][:39]:<40}{row['status']:<10}{row['n']:>5}{row['like_rate']:>10.3f}"
            f"{'[' + format(row['ci_low'], '.3f') + ', ' + format(row['ci_high'], '.3f') + ']':>16}"
            f"{(format(vs['lift'], '+.3f') if vs else ''):>8}"
            f"{(format(vs['p_z_one_sided'], '.3g') if vs else ''):>9}"
            f"{(format(vs['p_fisher_one_sided'], '.3g') if vs else ''):>11}"
            f"{('yes' if vs.get('significant') else 'no') if vs else '':>5}"
            f"{(q.get('relevance') or 0):>8.3f}{q.get('repeated_ngram_rate', 0):>7.3f}"
            f"{q.get('mean_words', 0):>7.1f}{q.get('cut_off_share', 0):>6.2f}{q.get('near_empty_share', 0):>7.3f}"
            f"  {format_guards(row.get('guards_vs_base'))}"
        )
    lines += [
        "",
        f"empty: near-empty share (< {NEAR_EMPTY_WORDS} words); guards vs base: relevance and repetition within 5% "
        "of base's, near-empty not above base's (issue 14's bar)",
    ]
    if report.get("drift"):
        lines += [
            "",
            f"drift {report['drift']}: each lift is against base's held-out answers judged by the same users "
            "as the version (one base row per taste)",
        ]
    variants = {r["label"]: r["variant"] for r in report["versions"] if r.get("variant", r["label"]) != r["label"]}
    lines += ["", *(f"variant: {v}" for v in variants.values())] if variants else []
    return "\n".join(lines)


def format_live_table(report: dict) -> str:
    """Per round: the live like rate (95% CI) of the traffic served after it, overall and per A/B
    arm, the users' taste, whether its training feedback was poisoned, and the guardrail's decision."""
    head = (
        f"{'algorithm':<10}{'round':>6}  {'users':<10}{'poison':<7}{'n':>5}{'like rate':>10}{'95% CI':>16}"
        f"{'active arm':>12}{'cand. arm':>12}  decision"
    )
    lines = [head, "-" * len(head)]
    for row in report.get("live_rounds", []):
        arms = row.get("arms", {})
        shown = {k: f"{a['like_rate']:.3f}/{a['n']}" for k, a in arms.items()}
        lines.append(
            f"{row['algorithm']:<10}{row['round']:>6}  {row['users']:<10}{('yes' if row.get('poisoned') else ''):<7}"
            f"{row['n']:>5}{row['like_rate']:>10.3f}"
            f"{'[' + format(row['ci_low'], '.3f') + ', ' + format(row['ci_high'], '.3f') + ']':>16}"
            f"{shown.get('active', ''):>12}{shown.get('candidate', ''):>12}  {row.get('decision', '')}"
        )
    return "\n".join(lines)


def write_report(
    cfg: DemoConfig, report: dict, results: list[VersionResult], say, gap_answers: dict | None = None
) -> None:
    """``gap_answers``: per lane, (version, sentence, answers) of its behavior-gap evaluation under the least
    preferred sentence, written to behavior-gap.jsonl (served.jsonl holds the served sentence's)."""
    table = format_table(report)
    live_table = format_live_table(report) if report.get("live_rounds") else ""
    if live_table:
        say(
            "live like rate per round (traffic served after each round; arms: like rate/answers before the "
            "decision):\n" + live_table
        )
    judged_offline = any(row["status"] == "rejected" and "n" in row for row in report["versions"])
    say("like rate per adapter version (held-out questions, one simulated user per answer):\n" + table)
    if judged_offline:
        say("rejected candidates were never served: the demo generated their held-out answers itself")
    report["drift_recovery"] = drift_recovery(report)
    for entry in report["drift_recovery"]:
        say(f"drift ({report['drift']}): {entry['lane']} {entry['verdict']}")
    report["poison_verdict"] = poison_verdict(report)
    for entry in report["poison_verdict"]:
        say(f"poisoned round {entry['round']}: {entry['lane']} {entry['verdict']}")
    gaps = format_gaps(report)
    for line in gaps:
        say("behavior following: " + line)
    ceilings = format_ceilings(report)
    for line in ceilings:
        say("D vs ceiling: " + line)
    finish = format_finish_priors(report)
    for line in finish:
        say("finish priors: " + line)
    guard_lines = format_guard_intervals(report)
    for line in guard_lines:
        say("guards vs base (paired 95% intervals): " + line)
    if report["power"]:
        p = report["power"]
        say(
            f"power: base rate {p['base_rate']:.3f}, n={p['n_per_arm']} per arm; power to detect "
            + ", ".join(f"{k}: {v:.2f}" for k, v in p["power_for_lift"].items())
            + f"; n per arm for +0.10 at 80%: {p['n_needed_for_lift_0.10_at_80pct']}"
        )
    for entry in report["side_by_side"]:
        say(f"Q: {entry['question']}")
        for key, answer in entry.items():
            if key != "question":
                say(f"   {key:>30}: {answer.strip()[:300]!r}")
    say(
        f"total wall time {report['total_seconds']:.0f}s; phases: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in report["phases_seconds"].items())
    )
    (cfg.out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = ["# rlhb demo report", "", "```", table, "```", ""]
    if live_table:
        md += ["## Live traffic per round", "", "```", live_table, "```", ""]
        md += ["A/B arms: like rate/answers served before the live guardrail's decision.", ""]
        md += [f"drift: {cfg.drift or 'none'}; poisoned round: {cfg.poison_round or 'none'}; A/B share: {cfg.ab_share}"]
        md += ["", "![like rate per round](live.png)", ""]
        for row in report["live_rounds"]:
            if row.get("reason"):
                md.append(f"- {row['algorithm']} round {row['round']}: {row['decision']}: {row['reason']}")
        md.append("")
    if guard_lines:
        md += ["## Guards against base, with paired 95% intervals", ""]
        md += [f"- {line}" for line in guard_lines]
        md += [
            "",
            "Change of the mean against base on the same held-out questions and draws; intervals: paired bootstrap "
            "over those answers (rlhb/evaluation/quality.py). The bar (relevance and repetition within 5%, "
            "near-empty not above base's) is read on the point estimates; an interval that straddles it says one "
            "seed cannot tell.",
            "",
        ]
    if report.get("drift_recovery"):
        md += ["## Following the drift (held-out like rate, versions published at and after the drift round)", ""]
        md += [f"- {entry['lane']}: {entry['verdict']}" for entry in report["drift_recovery"]] + [""]
    if report.get("poison_verdict"):
        md += ["## The poisoned round (judged by the real users against the version it would replace)", ""]
        md += [f"- {entry['lane']}: {entry['verdict']}" for entry in report["poison_verdict"]] + [""]
    if judged_offline:
        md += ["Rejected candidates were never served; their answers were generated in the demo process", ""]
    if gaps:
        md += ["## Behavior following (same version, most vs least preferred sentence)", ""]
        md += [f"- {line}" for line in gaps] + [""]
    if ceilings:
        md += ["## D's held-out AUROC against the ceiling (same pairs, split by query)", ""]
        md += [f"- {line}" for line in ceilings]
        md += [
            "",
            "ceiling: the AUROC of the Bayes-optimal score on the same pairs (the users' true like and dislike "
            "probabilities and the viewing noise; rlhb/evaluation/d_ceiling.py), expected: its exact AUROC on these "
            "answers; D's share = (D - 0.5) / (ceiling - 0.5). A low ceiling: little signal in the feedback; a "
            "low share: D is the limit.",
            "",
        ]
    if finish:
        md += ["## Finish priors (each round's records decide: trainer.finish_evidence)", ""]
        md += [f"- {line}" for line in finish] + [""]
    md += [f"Total wall time: {report['total_seconds']:.0f} s", ""]
    md += ["## Answers side by side", ""]
    for entry in report["side_by_side"]:
        md.append(f"**Q:** {entry['question']}")
        md += [f"- *{k}*: {v.strip()}" for k, v in entry.items() if k != "question"]
        md.append("")
    (cfg.out_dir / "report.md").write_text("\n".join(md))
    with open(cfg.out_dir / "served.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            for s in r.served:
                f.write(json.dumps({"algorithm": r.algorithm, "version": r.version, **asdict(s)}) + "\n")
    if gap_answers:
        with open(cfg.out_dir / "behavior-gap.jsonl", "w", encoding="utf-8") as f:
            for lane, (version, sentence, answers) in gap_answers.items():
                for s in answers:
                    f.write(json.dumps({"algorithm": lane, "version": version, "behavior": sentence, **asdict(s)}))
                    f.write("\n")
    plot(cfg, report, results)
    if live_table:
        plot_live(cfg, report)
    say(f"wrote {cfg.out_dir / 'report.md'}, report.json, served.jsonl and demo.png")
