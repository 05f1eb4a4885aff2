"""D's held-out AUROC against the best any model could reach on the same pairs, after every RLHB round
(issue 14 item 3; the math: ``rlhb.evaluation.d_ceiling``).

The trainer writes the pairs its last held-out measurement used, with D's logits, the behavior pool and
the encoding (``trainer.heldout_pairs``: ``<lane>/state/trainer-metrics/d-heldout/<version>.jsonl``); it
knows nothing of simulated users. Here the demo, which does, judges each pair's (query, answer) and
builds the oracle with the lane's viewers per answer (``DemoConfig.viewers_mean``, the traffic's
1 + Poisson(m - 1)) and the encoding the trainer used (the aggregator's, as stored in Redis when the
round started). On the same pairs it reports D's AUROC (recomputed from the logits: it equals the
trainer's ``d_heldout_auroc``), the ceiling (the oracle's AUROC), the expected ceiling (exact, on these
answers) and D's share of the ceiling.

Which users. A record was judged by the users of the traffic that logged it: under ``--drift A:B@R`` the
base traffic and the traffic after rounds before R by A, later traffic by B; a poisoned batch had its likes
and dislikes swapped. The demo remembers, per impression id, the taste and whether the feedback was
inverted (``remember``), and judges every pair with the taste (and inversion) under which the majority of
the round's held-out pairs were logged: one population for the whole set, as a model seeing only
(query, answer, sentence) would have to assume. When the pairs are mixed, ``users_share`` (below 1) says
how many were logged under it, and the ceiling is then only approximate for the rest. Pairs whose
impression the demo did not serve (none in a demo run) count as untraced; with no traced pair, the taste
of the traffic just before the round is used.

Nothing here fails the demo: when the ceiling cannot be computed (no file, no pairs, an encoding the
trainer could not write, a user model without ``judge``), the entry says why (``available``: False).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rlhb.demo.lanes import Lane

LoggedUnder = dict[str, tuple[str, bool, float]]
"""impression id -> (users, feedback inverted, p_like those users gave the answer when it was served)."""


def remember(logged: LoggedUnder, served: Iterable, users: str, inverted: bool = False) -> None:
    """Note the users (and inversion) under which each answer of a traffic batch was logged."""
    for s in served:
        if s.impression_id:
            logged[s.impression_id] = (users, inverted, s.p_like)


def pairs_path(lane: Lane, version: str) -> Path:
    from trainer.heldout_pairs import heldout_pairs_path

    return heldout_pairs_path(lane.root / "state" / "trainer-metrics", version)


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def round_ceiling(path: Path, logged: LoggedUnder, viewers_mean: float, fallback_users: str) -> dict:
    """The entry of one round (``available``, and the numbers or the ``reason`` they are missing)."""
    try:
        return _round_ceiling(Path(path), logged, viewers_mean, fallback_users)
    except Exception as e:  # noqa: BLE001 - a report line, never a failed demo
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}


def _round_ceiling(path: Path, logged: LoggedUnder, viewers_mean: float, fallback_users: str) -> dict:
    from rlhb.evaluation.d_ceiling import Oracle, ceiling_on_pairs
    from rlhb.simulate.users import load_user_model
    from trainer.heldout_pairs import read_heldout_pairs
    from trainer.records import BehaviorPool

    if not path.is_file():
        return {"available": False, "reason": f"the trainer wrote no held-out pairs ({path.name} missing)"}
    dump = read_heldout_pairs(path)
    pairs = dump.pairs
    if not pairs:
        return {"available": False, "reason": "D had no held-out pairs this round"}
    enc = dump.encoding
    if enc is None:
        return {"available": False, "reason": "the trainer's encoding could not be written (a custom encoding)"}
    conditions = Counter(logged[p.impression_id][:2] for p in pairs if p.impression_id in logged)
    traced = sum(conditions.values())
    if conditions:  # the majority; ties go to the condition named first in sorted order (deterministic)
        (users, inverted), n_under = max(sorted(conditions.items()), key=lambda kv: kv[1])
    else:
        (users, inverted), n_under = (fallback_users, False), 0
    user = load_user_model(users)  # a model without judge(question, answer) fails here: the entry says why
    judged = [user.judge(p.query, p.answer) for p in pairs]
    probs = [(j.p_dislike, j.p_like) if inverted else (j.p_like, j.p_dislike) for j in judged]
    oracle = Oracle(BehaviorPool.from_signatures(dump.sentences, enc), enc, viewers_mean)
    result = ceiling_on_pairs(
        oracle,
        [p.real for p in pairs],
        [p.swap for p in pairs],
        [p.z_real for p in pairs],
        [p.z_swap for p in pairs],
        probs,
        counts=[p.counts for p in pairs],
    )
    same = [  # pairs logged under the chosen users: the p_like they gave when serving, judged again here
        abs(logged[p.impression_id][2] - j.p_like) < 1e-9
        for p, j in zip(pairs, judged, strict=True)
        if p.impression_id in logged and logged[p.impression_id][:2] == (users, inverted)
    ]
    logged_auroc = dump.meta.get("d_heldout_auroc")
    return _clean(
        {
            "available": True,
            **result,
            "queries": len({p.query for p in pairs}),
            "d_auroc_logged": logged_auroc,
            "iteration": dump.meta.get("iteration"),
            "users": users,
            "inverted_feedback": inverted,
            "users_share": n_under / len(pairs) if traced else None,
            "traced_share": traced / len(pairs),
            "judged_as_served": sum(same) / len(same) if same else None,
            "viewers_mean": viewers_mean,
        }
    )


def format_ceiling(entry: dict | None) -> str:
    """One short line: D, the ceiling (expected), the share; or why there is none."""
    if not entry:
        return ""
    if not entry.get("available"):
        return f"no ceiling: {entry.get('reason', '?')}"

    def num(key: str, spec: str = ".3f") -> str:
        value = entry.get(key)
        return "n/a" if value is None else format(value, spec)

    users = entry["users"] + (" (feedback inverted)" if entry.get("inverted_feedback") else "")
    if entry.get("users_share") is not None and entry["users_share"] < 1:
        users += f", as {entry['users_share']:.0%} of the pairs were logged"
    return (
        f"D AUROC {num('d_auroc')}, ceiling {num('ceiling_auroc')} (expected {num('expected_ceiling')}), "
        f"D's share {num('share_of_ceiling', '.2f')}; {entry['pairs']} pairs over {entry['queries']} queries, "
        f"judged by {users}"
    )
