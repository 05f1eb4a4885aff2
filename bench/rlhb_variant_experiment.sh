#!/usr/bin/env bash
# One RLHB variant in process on the fixed data of bench/adversarial_experiment.sh (640 base answers
# to training questions, concise users, 352 held-out answers per arm), evaluated under the most and
# the least preferred sentence. NAME names the variant; SET adds trainer overrides (key=value ...).
#   usage: NAME=adv2 SET="swap_share=0.5 d_label_smoothing=0.1" CODE=/path/to/checkout \
#          bash bench/rlhb_variant_experiment.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
NAME=${NAME:?variant name}
CODE=${CODE:-$(pwd)}
E=${RLHB_EXP_DIR:-/tmp/rlhb-exp}
PY="${PY:-$(pwd)/.venv/bin/python}"
X="env PYTHONPATH=$CODE RLHB_EXP_DIR=$E $PY $CODE/bench/demo_experiment.py"
LEAST="Users liked this answer at a low rate and disliked it at a high rate."
mkdir -p "$OUT"
# shellcheck disable=SC2086
$X train --answers "$E/base-train.jsonl" --users concise --algorithm rlhb --steps 24 --name "$NAME" --threads 2 \
  --output-root "$E/adapters" \
  --set d_warmup_steps=150 kl_coef=0.02 learning_rate=0.0005 batch_size=16 rollouts_per_prompt=4 \
        max_new_tokens=48 threads=2 ppo_epochs=2 minibatch_size=8 ${SET:-} > "$OUT/train-$NAME.jsonl"
cp "$E/adapters/$NAME.metrics.jsonl" "$OUT/metrics-$NAME.jsonl"
$X gen --split held-out --samples 2 --adapter "$E/adapters/$NAME" --version "$NAME" --out "$E/$NAME-heldout.jsonl" --threads 2
$X eval --answers "$E/$NAME-heldout.jsonl" --users concise > "$OUT/eval-$NAME.jsonl"
$X gen --split held-out --samples 2 --adapter "$E/adapters/$NAME" --version "$NAME-least" --behavior "$LEAST" \
  --out "$E/$NAME-heldout-least.jsonl" --threads 2
$X eval --answers "$E/$NAME-heldout-least.jsonl" --users concise > "$OUT/eval-$NAME-least.jsonl"
echo done > "$OUT/DONE-$NAME"
