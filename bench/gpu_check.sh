#!/usr/bin/env bash
# The GPU check (issue 17 item 5): on a CUDA machine with PyTorch, transformers and peft, no network and
# nothing of this project but its source tree, it BUILDS a ~1B Llama (TinyLlama-1.1B's shape, RANDOM
# weights, bf16) and a tokenizer in-process, runs one short RLHB round on the GPU (LM discriminator;
# rollouts, PPO epochs, D), publishes the adapter and hot-swaps it in the embedded backend under 8
# concurrent clients. One JSON line per check on stdout ({"check": ..., "ok": true|false|null, ...};
# ok null = skipped, with "why"), then a summary line. The steps are bench/gpu_check.py's (its docstring
# says what each measures); each runs in its own process under the step timeout:
#
#   nvidia-smi    the driver answers (bash)                  gpu_memory  CUDA peak of the round, of serving
#   torch_cuda    CUDA seen, bf16 matmul right               vllm_smoke  only where vllm imports
#   python_deps   the modules the steps import               summary     ok, the failed checks, the work folder
#   model         the random ~1B model + tokenizer, built
#   train_round   seconds per iteration: generate / update / discriminator (+ score), PPO epochs run
#   serving       "serving": tokens/s before and after the swap; "hot_swap": load, switch and
#                 first-answer seconds, failed requests (must be 0), whether it was published
#
#   bash bench/gpu_check.sh             on the GPU machine, from anywhere (sized for < 8 minutes on one H100/H200)
#   bash bench/gpu_check.sh --dry-run   the same steps on the CPU with tiny shapes (2 layers, hidden 64, fp32),
#                                       about a minute; the GPU-only checks are reported skipped
#
# The figures come from random weights: timings only, as every figure's line says. Missing modules: the GPU image
# lacks pydantic, pydantic-settings and redis (the project's schemas, settings, registry): run
# `bash bench/gpu_wheels.sh` where the package registry is reachable and carry the .whl/ folder it fills
# (~3.5 MB); when pydantic does not import and .whl/ holds wheels, this script installs them (pip, no index)
# into its work folder and puts that on PYTHONPATH.
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_DIR (work folder, default a new
# temporary one; each step's log is kept there), GPU_CHECK_STEP_TIMEOUT (seconds per step, default 300),
# GPU_CHECK_MODEL_DIR (an HF model folder instead of the built one: used as is if it has weights, else
# random weights of its config's shape), GPU_CHECK_TRAIN_SET (RLHBConfig overrides for the round,
# space-separated key=value, e.g. "max_new_tokens=32 ppo_epochs=2"). Exit status: 0 if no check failed
# (skipped ones do not fail), 1 otherwise, 2 for a usage error.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
STEP_TIMEOUT="${GPU_CHECK_STEP_TIMEOUT:-300}"
WORK="${GPU_CHECK_DIR:-$(mktemp -d -t rlhb-gpu-check-XXXXXX)}"
mkdir -p "$WORK" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The carried wheels (bench/gpu_wheels.sh), only where the image lacks them: nothing is fetched.
if ! "$PY" -c 'import pydantic' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl >"$WORK/wheels.log" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
    else
        echo "installing .whl/ failed, see $WORK/wheels.log" >&2
    fi
fi
MODE=()
[ "$DRY_RUN" = 1 ] && MODE=(--dry-run)
FAILED=()

# json KEY VALUE... -> one JSON object (values already JSON-encoded by the caller).
json() {
    local out="{" sep=""
    while [ $# -ge 2 ]; do out+="$sep\"$1\": $2"; sep=", "; shift 2; done
    printf '%s}\n' "$out"
}
str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "$1"; }
failed() { [[ " ${FAILED[*]} " == *" $1 "* ]]; }

# step NAME [NEEDS...]: bench/gpu_check.py NAME under the step timeout, its lines echoed; a step that
# prints nothing (killed by the timeout, an import error) still gets a line. Not run if a step it needs failed.
step() {
    local name="$1" need out rc
    shift
    for need in "$@"; do
        if failed "$need"; then
            json check "$(str "$name")" ok false why "$(str "not run: the $need step failed")"
            FAILED+=("$name")
            return
        fi
    done
    out=$(timeout -k 10 "$STEP_TIMEOUT" "$PY" bench/gpu_check.py "$name" --work "$WORK" "${MODE[@]}" 2>"$WORK/$name.log")
    rc=$?
    if [ -n "$out" ]; then printf '%s\n' "$out"; else
        json check "$(str "$name")" ok false rc "$rc" why "$(str "no result line (rc $rc; 124 = timed out after ${STEP_TIMEOUT}s); see $WORK/$name.log")"
    fi
    [ "$rc" = 0 ] || FAILED+=("$name")
}

# 1. nvidia-smi --------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    json check '"nvidia-smi"' ok null why '"dry-run: runs on the CPU"'
elif command -v nvidia-smi >/dev/null 2>&1 && out=$(timeout 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>"$WORK/nvidia-smi.log"); then
    json check '"nvidia-smi"' ok true gpus "$(str "$out")"
else
    json check '"nvidia-smi"' ok false why "$(str "nvidia-smi missing or failed (see $WORK/nvidia-smi.log)")"
    FAILED+=(nvidia-smi)
fi

# 2-8. bench/gpu_check.py's steps, each needing the ones named after it ----------------------
step torch_cuda
step python_deps
step model python_deps
step train_round model
step serving train_round
step gpu_memory
step vllm_smoke

failed_json="[]"
if [ ${#FAILED[@]} -gt 0 ]; then failed_json="[$(printf '"%s",' "${FAILED[@]}" | sed 's/,$//')]"; fi
if [ ${#FAILED[@]} -eq 0 ]; then ok=true; else ok=false; fi
if [ "$DRY_RUN" = 1 ]; then dry=true; else dry=false; fi
json check '"summary"' ok "$ok" dry_run "$dry" failed "$failed_json" logs "$(str "$WORK")"
[ "$ok" = true ]
