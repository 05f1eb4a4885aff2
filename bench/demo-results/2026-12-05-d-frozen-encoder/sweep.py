"""E16's frozen-encoder D variants: bench/d_designs.py with extra designs "frozen-NAME".

SWEEP=head: seed 0, head variants, 1500 steps each (seed0-head-variants.jsonl)
  python bench/demo-results/2026-12-05-d-frozen-encoder/sweep.py \
      --designs frozen-lr3e-4,frozen-lr1e-4,frozen-dim16,frozen-smooth --threads 1 --bootstrap 200 --out OUT
SWEEP=lr: per seed, head learning rates, 600 steps, next to the fine-tuned D (seed*-lr1e-4-lr3e-5*.jsonl)
  python bench/demo-results/2026-12-05-d-frozen-encoder/sweep.py --seed 1 \
      --designs frozen-lr1e-4,frozen-lr3e-5,minilm --steps 150 --eval-every 50 --threads 1 --bootstrap 200 --out OUT
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
import d_designs as dd  # noqa: E402

SWEEPS = {  # name -> (variants, steps, eval every)
    "head": (
        {
            "lr3e-4": {"d_head_learning_rate": 3e-4},
            "lr1e-4": {"d_head_learning_rate": 1e-4},
            "dim16": {"d_embed_dim": 16},
            "smooth": {"d_label_smoothing": 0.1, "d_head_learning_rate": 3e-4},
        },
        1500,
        150,
    ),
    "lr": ({"lr1e-4": {"d_head_learning_rate": 1e-4}, "lr3e-5": {"d_head_learning_rate": 3e-5}}, 600, 50),
}
variants, frozen_steps, frozen_every = SWEEPS[os.environ.get("SWEEP", "lr")]
for name, extra in variants.items():
    dd.DESIGNS[f"frozen-{name}"] = {"discriminator": "minilm", "d_freeze_encoder": True, **extra}
run_design = dd.run_design


def run_frozen(design, steps, every, *args, **kwargs):
    if design.startswith("frozen-"):
        steps, every = frozen_steps, frozen_every
    return run_design(design, steps, every, *args, **kwargs)


dd.run_design = run_frozen
dd.main()
