"""E16's seed-0 head variants of the frozen-encoder D (1500 steps each): bench/d_designs.py with extra designs.

python bench/demo-results/2026-12-05-d-frozen-encoder/sweep_head_variants.py \
    --designs frozen-lr3e-4,frozen-lr1e-4,frozen-dim16,frozen-smooth --threads 1 --bootstrap 200 --out OUT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
import d_designs as dd  # noqa: E402

VARIANTS = {
    "lr3e-4": {"d_head_learning_rate": 3e-4},
    "lr1e-4": {"d_head_learning_rate": 1e-4},
    "dim16": {"d_embed_dim": 16},
    "smooth": {"d_label_smoothing": 0.1, "d_head_learning_rate": 3e-4},
}
for name, extra in VARIANTS.items():
    dd.DESIGNS[f"frozen-{name}"] = {"discriminator": "minilm", "d_freeze_encoder": True, **extra}
run_design = dd.run_design


def run_frozen(design, steps, every, *args, **kwargs):
    if design.startswith("frozen-"):
        steps, every = 1500, 150
    return run_design(design, steps, every, *args, **kwargs)


dd.run_design = run_frozen
dd.main()
