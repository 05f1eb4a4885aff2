"""Table of an in-process experiment folder's judged arms (``eval-NAME.jsonl`` from
``bench/demo_experiment.py eval``): like rate with its Wilson CI, the lift over ``eval-base``
(one-sided pooled z), the behavior-following gap of every ``NAME`` that has ``eval-NAME-least``
(most vs least preferred sentence, one-sided z), and the guards beside each number.

    usage: python bench/summarize_evals.py OUT_DIR   # prints markdown, then one JSON line per arm
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhb.evaluation.stats import two_proportion_z  # noqa: E402

GUARDS = ("mean_p_like", "mean_words", "near_empty_share", "cut_off_share", "relevance", "repeated_ngram_rate")


def last_eval(path: Path) -> dict:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("event") == "eval"][-1]


def main(out: Path) -> None:
    arms = {p.stem.removeprefix("eval-"): last_eval(p) for p in sorted(out.glob("eval-*.jsonl"))}
    base = arms.get("base")
    print("| arm | like rate [95% CI] | lift vs base, one-sided p | " + " | ".join(GUARDS) + " |")
    print("|---" * (3 + len(GUARDS)) + "|")
    results = []
    for name, r in arms.items():
        row = {"arm": name, "likes": r["likes"], "n": r["n"], "like_rate": r["like_rate"], "ci": r["ci"]}
        lift = ""
        if base is not None and name != "base":
            _, p, _ = two_proportion_z(r["likes"], r["n"], base["likes"], base["n"])
            row["lift"], row["p_lift"] = r["like_rate"] - base["like_rate"], p
            lift = f"{row['lift']:+.3f}, {p:.2g}"
        least = arms.get(f"{name}-least")
        if least is not None:
            _, p, _ = two_proportion_z(r["likes"], r["n"], least["likes"], least["n"])
            row["gap"], row["p_gap"] = r["like_rate"] - least["like_rate"], p
        ci = f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        guards = " | ".join(f"{r.get(g, float('nan')):.3f}" for g in GUARDS)
        print(f"| {name} | {r['like_rate']:.3f} {ci} | {lift} | {guards} |")
        results.append({**row, **{g: r.get(g) for g in GUARDS}})
    for row in results:
        if "gap" in row:
            print(f"gap {row['arm']}: {row['gap']:+.3f} (most vs least), one-sided p {row['p_gap']:.3g}")
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
