import sys, json
sys.argv = [sys.argv[0]] + sys.argv[1:]
sys.path.insert(0, "/work/main/bench")
import d_designs as dd
variants = {
    "lr3e-4": {"d_head_learning_rate": 3e-4},
    "lr1e-4": {"d_head_learning_rate": 1e-4},
    "dim16": {"d_embed_dim": 16},
    "smooth": {"d_label_smoothing": 0.1, "d_head_learning_rate": 3e-4},
}
for name, extra in variants.items():
    dd.DESIGNS[f"frozen-{name}"] = {"discriminator": "minilm", "d_freeze_encoder": True, **extra}
orig = dd.run_design
def run_design(design, steps, every, *a, **k):
    if design.startswith("frozen-"):
        steps, every = 1500, 150
    return orig(design, steps, every, *a, **k)
dd.run_design = run_design
dd.main()
