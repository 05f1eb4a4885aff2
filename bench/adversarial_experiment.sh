#!/usr/bin/env bash
# Paper-faithful RLHB in process (issue 14): adversarial D (trained every iteration), every PPO
# prompt on its record's own behavior sentence (preferred_prompt_share 0), kappa = top-rewarded
# real records relabelled fake, PPO 2 epochs x 2 minibatches. Same data protocol as E3 in
# bench/demo_experiments.md (640 base answers to training questions, concise users, 5 viewers,
# 352 held-out answers per arm), so the frozen-D E3 row is the comparison.
# Then the behavior-following check: the trained version answers the held-out questions under the
# most preferred and under the least preferred sentence.
#   usage: CODE=/path/to/checkout bash bench/adversarial_experiment.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
CODE=${CODE:-$(pwd)}
E=${RLHB_EXP_DIR:-/tmp/rlhb-exp}
PY="${PY:-$(pwd)/.venv/bin/python}"
X="env PYTHONPATH=$CODE RLHB_EXP_DIR=$E $PY $CODE/bench/demo_experiment.py"
mkdir -p "$OUT"
LEAST="Users liked this answer at a low rate and disliked it at a high rate."
[ -s "$E/base-train.jsonl" ] || $X gen --split train --samples 2 --n 640 --out "$E/base-train.jsonl" --threads 2
[ -s "$E/base-heldout.jsonl" ] || $X gen --split held-out --samples 2 --out "$E/base-heldout.jsonl" --threads 2
$X records --answers "$E/base-train.jsonl" --users concise > "$OUT/records.jsonl"
$X eval --answers "$E/base-heldout.jsonl" --users concise > "$OUT/eval-base.jsonl"
$X train --answers "$E/base-train.jsonl" --users concise --algorithm rlhb --steps 24 --name adv --threads 2 \
  --output-root "$E/adapters" \
  --set d_warmup_steps=150 kl_coef=0.02 learning_rate=0.0005 batch_size=16 rollouts_per_prompt=4 \
        max_new_tokens=48 threads=2 ppo_epochs=2 minibatch_size=8 > "$OUT/train.jsonl"
cp "$E/adapters/adv.metrics.jsonl" "$OUT/metrics.jsonl"
$X gen --split held-out --samples 2 --adapter "$E/adapters/adv" --version adv --out "$E/adv-heldout.jsonl" --threads 2
$X eval --answers "$E/adv-heldout.jsonl" --users concise > "$OUT/eval-adv.jsonl"
$X gen --split held-out --samples 2 --adapter "$E/adapters/adv" --version adv-least --behavior "$LEAST" \
  --out "$E/adv-heldout-least.jsonl" --threads 2
$X eval --answers "$E/adv-heldout-least.jsonl" --users concise > "$OUT/eval-adv-least.jsonl"
$X gen --split held-out --samples 2 --version base-least --behavior "$LEAST" --out "$E/base-heldout-least.jsonl" --threads 2
$X eval --answers "$E/base-heldout-least.jsonl" --users concise > "$OUT/eval-base-least.jsonl"
echo done > "$OUT/DONE"
