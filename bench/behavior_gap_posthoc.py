"""Post-hoc behavior-following gap of a finished demo run's versions (runs from before the demo measured it
itself, or before it kept the least preferred answers): the offline generation and judging the demo uses for a
rejected candidate (rlhb.demo.judging.judge_offline, seed + EVAL_SEED_OFFSET), under the least preferred sentence.
The run's settings (users, eval_samples, max_tokens, temperature, seed) come from its report.json.

By default the most preferred side is the run's own answers in served.jsonl. With --offline-both it is generated
offline too, so both sides come from the same generator and the paired test (``paired_p_like``, by answer index)
compares like with like. Writes behavior-gap.json (or behavior-gap-offline.json) next to the report.

    usage: python bench/behavior_gap_posthoc.py RUN_DIR LANES_DIR LANE=VERSION [LANE=VERSION ...] [--offline-both]
    (2026-12-04: bench/demo-results/2026-12-04-thorough /tmp/thorough-lanes
     rlhb-frozen=rlhb-r0001-20261204-154836-9f80 rlhb=rlhb-r0001-20261204-151407-3cef)"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from core.behavior.encoding import least_preferred_sentence
from rlhb.demo.config import DemoConfig
from rlhb.demo.judging import judge_offline
from rlhb.demo.report import behavior_gap
from rlhb.queries import split_questions
from rlhb.simulate.driver import Served

args = [a for a in sys.argv[1:] if not a.startswith("--")]
offline_both = "--offline-both" in sys.argv
out, lanes_dir = Path(args[0]), Path(args[1])
pairs = [arg.split("=", 1) for arg in args[2:]]
run = json.loads((out / "report.json").read_text())["config"]
cfg = DemoConfig(
    users=run["users"],
    algorithms=tuple(lane for lane, _ in pairs),
    threads=2,
    **{k: run[k] for k in ("eval_samples", "max_tokens", "temperature", "seed")},
)
served = [json.loads(x) for x in (out / "served.jsonl").read_text().splitlines()]
held_out = list(split_questions().held_out)
model = str(Path.home() / ".cache/rlhb/models/SmolLM2-135M-Instruct")
results = {}
for lane, version in pairs:
    fake_lane = SimpleNamespace(root=lanes_dir / f"lane-{lane}")  # judge_offline reads root/adapters/version
    if offline_both:
        most = judge_offline(cfg, fake_lane, version, held_out, model, print)
    else:
        most = [
            Served(**{k: v for k, v in s.items() if k not in ("algorithm", "version")})
            for s in served
            if s["version"] == version
        ]
    least = judge_offline(cfg, fake_lane, version, held_out, model, print, least_preferred_sentence())
    results[lane] = {"version": version, "most_offline": offline_both, **behavior_gap(most, least)}
    print(json.dumps(results[lane]), flush=True)
name = "behavior-gap-offline.json" if offline_both else "behavior-gap.json"
(out / name).write_text(json.dumps(results, indent=2))
