#!/usr/bin/env bash
# E10 (issue 14 item 2): behavior-conditioned SFT (SteerLM, which the RLHB paper cites) on every
# logged record under its own behavior sentence, without and with the behavior contrast of
# trainer/algorithms/steer.py, then paper-faithful RLHB from the steered adapter
# (adversarial D with E6's stabilisers, every PPO prompt on its record's own sentence). Same data
# protocol as E5-E8 (640 base answers to training questions, 5 viewers, 352 held-out answers per
# arm); each stage answers the held-out questions under the most and the least preferred sentence.
#   usage: USERS=concise CODE=/path/to/checkout bash bench/steer_experiment.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
CODE=${CODE:-$(pwd)}
USERS=${USERS:-concise}
SFT_STEPS=${SFT_STEPS:-160}
CONTRAST_STEPS=${CONTRAST_STEPS:-120}
RLHB_STEPS=${RLHB_STEPS:-24}
E=${RLHB_EXP_DIR:-/tmp/rlhb-exp}
PY="${PY:-$(pwd)/.venv/bin/python}"
X="env PYTHONPATH=$CODE RLHB_EXP_DIR=$E $PY $CODE/bench/demo_experiment.py"
mkdir -p "$OUT" "$E/adapters"
[ -s "$E/base-train.jsonl" ] || $X gen --split train --samples 2 --n 640 --out "$E/base-train.jsonl" --threads 2
[ -s "$E/base-heldout.jsonl" ] || $X gen --split held-out --samples 2 --out "$E/base-heldout.jsonl" --threads 2
[ -s "$OUT/eval-base.jsonl" ] || $X eval --answers "$E/base-heldout.jsonl" --users "$USERS" > "$OUT/eval-base.jsonl"

# shellcheck source=bench/judge_heldout.sh
source "$CODE/bench/judge_heldout.sh"

# 1. SteerLM: imitate every record (top_fraction 1, no reward threshold) under its own sentence.
if [ ! -e "$OUT/DONE-steer-sft" ]; then
  $X train --answers "$E/base-train.jsonl" --users "$USERS" --algorithm sft --steps "$SFT_STEPS" --name steer-sft \
    --threads 2 --output-root "$E/adapters" \
    --set top_fraction=1.0 min_reward=-1000 prompt_behavior='"record"' learning_rate=0.0003 batch_size=8 \
          threads=2 > "$OUT/train-steer-sft.jsonl"
  cp "$E/adapters/steer-sft.metrics.jsonl" "$OUT/metrics-steer-sft.jsonl"
  judge steer-sft
  echo done > "$OUT/DONE-steer-sft"
fi

# 2. The same with the behavior contrast (trainer/algorithms/steer.py): the sentence must matter.
CNAME=${CNAME:-steer-contrast}
if [ ! -e "$OUT/DONE-$CNAME" ]; then
  $X steer --answers "$E/base-train.jsonl" --users "$USERS" --steps "$CONTRAST_STEPS" --lr 0.0005 --batch 8 \
    --contrast "${CONTRAST:-1.0}" --beta "${BETA:-0.1}" \
    --contrast-records "${CONTRAST_RECORDS:-preferred}" --threads 2 --out "$E/adapters/$CNAME" > "$OUT/train-$CNAME.jsonl"
  cp "$E/adapters/$CNAME/steer.metrics.jsonl" "$OUT/metrics-$CNAME.jsonl"
  judge "$CNAME"
  echo done > "$OUT/DONE-$CNAME"
fi
[ -n "${SKIP_RLHB:-}" ] && exit 0

# 3. Paper-faithful RLHB from the steered adapter.
$X train --answers "$E/base-train.jsonl" --users "$USERS" --algorithm rlhb --steps "$RLHB_STEPS" --name "${RNAME:-steer-rlhb}" \
  --threads 2 --output-root "$E/adapters" --parent "$E/adapters/${PARENT:-$CNAME}" \
  --set d_warmup_steps=150 kl_coef=0.02 learning_rate=0.0005 batch_size=16 rollouts_per_prompt=4 \
        max_new_tokens=48 threads=2 ppo_epochs=2 minibatch_size=8 swap_share=0.5 d_label_smoothing=0.1 \
        d_replay_size=256 d_adversarial_lr_scale=0.2 ${SET:-} > "$OUT/train-${RNAME:-steer-rlhb}.jsonl"
cp "$E/adapters/${RNAME:-steer-rlhb}.metrics.jsonl" "$OUT/metrics-${RNAME:-steer-rlhb}.jsonl"
judge "${RNAME:-steer-rlhb}"
echo done > "$OUT/DONE-${RNAME:-steer-rlhb}"
