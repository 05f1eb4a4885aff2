import sys
sys.path.insert(0, "/work/main/bench")
import d_designs as dd
for name, extra in {"lr1e-4": {"d_head_learning_rate": 1e-4}, "lr3e-5": {"d_head_learning_rate": 3e-5}}.items():
    dd.DESIGNS[f"frozen-{name}"] = {"discriminator": "minilm", "d_freeze_encoder": True, **extra}
orig = dd.run_design
def run_design(design, steps, every, *a, **k):
    if design.startswith("frozen-"):
        steps, every = 600, 50
    return orig(design, steps, every, *a, **k)
dd.run_design = run_design
dd.main()
