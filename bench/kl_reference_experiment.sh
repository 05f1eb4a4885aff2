#!/usr/bin/env bash
# E12 (issue 14 items 2-3): does the KL reference decide whether PPO after steering drifts to
# near-empty answers? E11's frozen-D PPO from the steered adapter reached +0.216 but 12.2% near-empty
# answers, with KL to the base at 14 nats per answer from iteration 0. A per-token KL summed over
# the answer charges a policy that is already far from its reference in proportion to the answer's
# length, which is a reward for short answers. kl_reference="start" measures the KL from the
# steered adapter instead. Arms, each from the same steered adapter (E11's preferred-side steering),
# 20 PPO iterations, E11's PPO settings otherwise:
#   frozen-start : frozen D (paper 6.4), every prompt on the served sentence, kl_reference=start
#   adv-start    : the paper's adversarial D (E6 stabilisers), every prompt on its record's own
#                  sentence, kl_reference=start
#   frozen-start-kl05 : frozen-start with kl_coef 0.05 instead of 0.02 (a tighter trust region)
#   frozen-base  : E11's arm (frozen D, KL to the base), for a rerun on other users
#   usage: USERS=concise ARMS="frozen-start adv-start" bash bench/kl_reference_experiment.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
CODE=${CODE:-$(pwd)}
USERS=${USERS:-concise}
STEPS=${STEPS:-20}
ARMS=${ARMS:-frozen-start adv-start}
E=${RLHB_EXP_DIR:-/tmp/rlhb-exp}
PY="${PY:-$(pwd)/.venv/bin/python}"
X="env PYTHONPATH=$CODE RLHB_EXP_DIR=$E $PY $CODE/bench/demo_experiment.py"
PARENT=${PARENT:-steer-pref-$USERS}
mkdir -p "$OUT" "$E/adapters"

# data and the steered parent (E11's preferred-side steering; the NLL-only stage is skipped)
touch "$OUT/DONE-steer-sft"
CNAME=$PARENT BETA=1.0 CONTRAST_RECORDS=preferred SKIP_RLHB=1 USERS=$USERS CODE=$CODE PY=$PY \
  bash "$CODE/bench/steer_experiment.sh" "$OUT"

# shellcheck source=bench/judge_heldout.sh
source "$CODE/bench/judge_heldout.sh"

COMMON="d_warmup_steps=150 kl_coef=0.02 learning_rate=0.0005 batch_size=16 rollouts_per_prompt=4 max_new_tokens=48"
for arm in $ARMS; do
  name="$arm-$USERS"
  [ -e "$OUT/DONE-$name" ] && continue
  case $arm in
    frozen-start) extra='d_frozen=true preferred_prompt_share=1.0 kl_reference="start"' ;;
    frozen-start-kl05) extra='d_frozen=true preferred_prompt_share=1.0 kl_reference="start" kl_coef=0.05' ;;
    frozen-base) extra='d_frozen=true preferred_prompt_share=1.0' ;;
    adv-start) extra='ppo_epochs=2 minibatch_size=8 swap_share=0.5 d_label_smoothing=0.1 d_replay_size=256 d_adversarial_lr_scale=0.2 kl_reference="start"' ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086  # COMMON and extra are lists of key=value words
  $X train --answers "$E/base-train.jsonl" --users "$USERS" --algorithm rlhb --steps "$STEPS" --name "$name" \
    --threads 2 --output-root "$E/adapters" --parent "$E/adapters/$PARENT" --set $COMMON $extra ${SET:-} \
    > "$OUT/train-$name.jsonl"
  cp "$E/adapters/$name.metrics.jsonl" "$OUT/metrics-$name.jsonl"
  judge "$name"
  echo done > "$OUT/DONE-$name"
done
