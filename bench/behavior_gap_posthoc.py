"""Post-hoc behavior-following gap of a finished demo run's rejected candidates (runs from before
the demo measured it itself): the same offline generation and judging the demo used for their
served-sentence answers (rlhb.demo.judging.judge_offline, seed + EVAL_SEED_OFFSET), under the least
preferred sentence; writes behavior-gap.json next to the report.

    usage: python bench/behavior_gap_posthoc.py RUN_DIR LANES_DIR USERS LANE=VERSION [LANE=VERSION ...]
    (2026-12-04: bench/demo-results/2026-12-04-thorough /tmp/thorough-lanes thorough
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

out, lanes_dir, users = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
pairs = [arg.split("=", 1) for arg in sys.argv[4:]]
served = [json.loads(x) for x in (out / "served.jsonl").read_text().splitlines()]
cfg = DemoConfig(users=users, algorithms=tuple(lane for lane, _ in pairs), threads=2)
held_out = list(split_questions().held_out)
model = str(Path.home() / ".cache/rlhb/models/SmolLM2-135M-Instruct")
results = {}
for lane, version in pairs:
    most = [
        Served(**{k: v for k, v in s.items() if k not in ("algorithm", "version")})
        for s in served
        if s["version"] == version
    ]
    fake_lane = SimpleNamespace(root=lanes_dir / f"lane-{lane}")  # judge_offline reads root/adapters/version
    least = judge_offline(cfg, fake_lane, version, held_out, model, print, least_preferred_sentence())
    results[lane] = {"version": version, **behavior_gap(most, least)}
    print(json.dumps(results[lane]), flush=True)
(out / "behavior-gap.json").write_text(json.dumps(results, indent=2))
