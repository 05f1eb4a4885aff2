"""E16's head learning rates of the frozen-encoder D (600 steps) next to the fine-tuned D (150 steps), per seed.

python bench/demo-results/2026-12-05-d-frozen-encoder/sweep_lr.py --seed 1 \
    --designs frozen-lr1e-4,frozen-lr3e-5,minilm --steps 150 --eval-every 50 --threads 1 --bootstrap 200 --out OUT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
import d_designs as dd  # noqa: E402

for name, lr in {"lr1e-4": 1e-4, "lr3e-5": 3e-5}.items():
    dd.DESIGNS[f"frozen-{name}"] = {"discriminator": "minilm", "d_freeze_encoder": True, "d_head_learning_rate": lr}
run_design = dd.run_design


def run_frozen(design, steps, every, *args, **kwargs):
    if design.startswith("frozen-"):
        steps, every = 600, 50
    return run_design(design, steps, every, *args, **kwargs)


dd.run_design = run_frozen
dd.main()
