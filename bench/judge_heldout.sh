# Sourced by the experiment scripts (steer_experiment.sh, kl_reference_experiment.sh); needs X (the
# demo_experiment.py command), E (the experiment folder), OUT and USERS set by the caller.
LEAST="Users liked this answer at a low rate and disliked it at a high rate."

judge() {  # judge NAME: held-out answers under the most and the least preferred sentence
  local name=$1
  $X gen --split held-out --samples 2 --adapter "$E/adapters/$name" --version "$name" --out "$E/$name-heldout.jsonl" --threads 2
  $X eval --answers "$E/$name-heldout.jsonl" --users "$USERS" > "$OUT/eval-$name.jsonl"
  $X gen --split held-out --samples 2 --adapter "$E/adapters/$name" --version "$name-least" --behavior "$LEAST" \
    --out "$E/$name-heldout-least.jsonl" --threads 2
  $X eval --answers "$E/$name-heldout-least.jsonl" --users "$USERS" > "$OUT/eval-$name-least.jsonl"
}
