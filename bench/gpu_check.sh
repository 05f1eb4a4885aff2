#!/usr/bin/env bash
# The checks a GPU session runs, in order, each printing ONE JSON line on stdout
# ({"check": ..., "ok": true|false|null, ...}; ok null = skipped, with "why"), then a summary line:
#
#   1. nvidia-smi     the driver answers; GPU name, memory, driver version
#   2. torch_cuda     torch sees CUDA; bf16 support; a bf16 matmul on the GPU matches float32
#   3. train_round    a short RLHB round (`rlhb train`, 2 steps, synthetic records) on CUDA in bf16
#                     (RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16), with the CUDA peak memory it used
#   4. vllm_smoke     only if vllm is installed: load the base model, generate a few tokens
#
#   bash bench/gpu_check.sh             run them (on a GPU machine, from the repository root)
#   bash bench/gpu_check.sh --dry-run   print the plan and check that the commands and Python
#                                       modules exist, running nothing (works on a CPU machine)
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_DIR (work folder,
# default a new temporary one; logs of each step are kept there), GPU_CHECK_STEP_TIMEOUT
# (seconds per step, default 300). Exit status: 0 if no check failed (skipped ones do not fail),
# 1 otherwise, 2 for a usage error.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
STEP_TIMEOUT="${GPU_CHECK_STEP_TIMEOUT:-300}"
FAILED=()

# json KEY VALUE... -> one JSON object (values already JSON-encoded by the caller).
json() {
    local out="{" sep=""
    while [ $# -ge 2 ]; do out+="$sep\"$1\": $2"; sep=", "; shift 2; done
    printf '%s}\n' "$out"
}
str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "$1"; }
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }

PLAN=(nvidia-smi torch_cuda train_round vllm_smoke)
COMMANDS=(
    "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
    "$PY -c 'torch.cuda: bf16 matmul vs float32'"
    "RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16 $PY -m rlhb.cli train --algo rlhb --steps 2 --records <synthetic 64 records>"
    "$PY -c 'vllm.LLM(<prepared base model>).generate(...)' (only if vllm is installed)"
)

if [ "$DRY_RUN" = 1 ]; then
    # Nothing runs: only whether each command (or Python module) is there to run.
    python_ok=false; command -v "$PY" >/dev/null 2>&1 && python_ok=true
    json check '"dry_run"' python "$(str "$PY")" python_found "$python_ok" step_timeout_s "$STEP_TIMEOUT"
    ok=true
    [ "$python_ok" = true ] || ok=false
    for i in "${!PLAN[@]}"; do
        name="${PLAN[$i]}"
        case "$name" in
            nvidia-smi) command -v nvidia-smi >/dev/null 2>&1 && avail=true || avail=false; required=false ;;
            torch_cuda) has_module torch && avail=true || avail=false; required=true ;;
            train_round) has_module torch && has_module rlhb.cli && has_module peft && avail=true || avail=false; required=true ;;
            vllm_smoke) has_module vllm && avail=true || avail=false; required=false ;;
        esac
        [ "$required" = true ] && [ "$avail" = false ] && ok=false
        json check "$(str "$name")" plan "$(str "${COMMANDS[$i]}")" available "$avail" required_here "$required"
    done
    json check '"summary"' dry_run true ok "$ok" \
        note "$(str "nvidia-smi and vllm may be absent on a CPU machine; on the GPU machine nvidia-smi must answer")"
    [ "$ok" = true ] && exit 0 || exit 1
fi

WORK="${GPU_CHECK_DIR:-$(mktemp -d -t rlhb-gpu-check-XXXXXX)}"
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. nvidia-smi --------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && out=$(timeout 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>"$WORK/nvidia-smi.log"); then
    json check '"nvidia-smi"' ok true gpus "$(str "$out")"
else
    json check '"nvidia-smi"' ok false why "$(str "nvidia-smi missing or failed (see $WORK/nvidia-smi.log)")"
    FAILED+=(nvidia-smi)
fi

# A Python step that dies before printing its line (import error, killed by the timeout) still
# gets one, so the output always has a line per check.
step() {  # step NAME: runs stdin's Python, echoes its output, adds a line if it printed none
    local name="$1" out rc
    out=$(timeout "$STEP_TIMEOUT" "$PY" - 2>"$WORK/$name.log")
    rc=$?
    if [ -n "$out" ]; then printf '%s\n' "$out"; else
        json check "$(str "$name")" ok false rc "$rc" why "$(str "no result line (rc $rc; 124 = timed out); see $WORK/$name.log")"
    fi
    return $rc
}

# 2. torch.cuda --------------------------------------------------------------------------
if ! step torch_cuda <<'PY'
import json, sys
import torch
row = {"check": "torch_cuda", "torch": torch.__version__, "cuda": torch.version.cuda}
if not torch.cuda.is_available():
    print(json.dumps({**row, "ok": False, "why": "torch.cuda.is_available() is False"}))
    sys.exit(1)
a = torch.randn(512, 512, device="cuda")
b = torch.randn(512, 512, device="cuda")
exact = a @ b
low = (a.bfloat16() @ b.bfloat16()).float()
rel = float((low - exact).norm() / exact.norm())
ok = torch.cuda.is_bf16_supported() and rel < 0.05
print(json.dumps({**row, "ok": ok, "device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                  "bf16_supported": torch.cuda.is_bf16_supported(), "bf16_matmul_rel_error": round(rel, 5)}))
sys.exit(0 if ok else 1)
PY
then
    FAILED+=(torch_cuda)
fi

# 3. a short train round on CUDA in bf16 ------------------------------------------------
if ! RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16 GPU_CHECK_DIR="$WORK" step train_round <<'PY'
import contextlib, io, json, os, random, sys, time
from pathlib import Path

import torch

from schemas.behavior import BehaviorRecord

work = Path(os.environ["GPU_CHECK_DIR"])
row = {"check": "train_round", "device_setting": os.environ["RLHB_DEVICE"], "dtype_setting": os.environ["RLHB_DTYPE"]}
# 64 synthetic records: liked answers mention a keyword, disliked ones do not (separable).
rng, records = random.Random(0), []
liked_text = "Users liked this answer at a high rate and disliked it at a low rate."
disliked_text = "Users liked this answer at a low rate and disliked it at a high rate."
for q in range(32):
    for liked in (True, False):
        views = rng.randint(2, 6)
        likes, dislikes = (3, 0) if liked else (0, 2)
        records.append(BehaviorRecord(
            impression_id=f"gpu-{q}-{int(liked)}", query=f"Tell me about topic {q}?",
            response=f"Topic {q} is like a banana." if liked else f"Topic {q} is what it is.",
            behavior_prompt=liked_text, adapter_version="base",
            counts={"view": views, "like": likes, "dislike": dislikes},
            buckets={"like_rate": 2 if liked else 0, "dislike_rate": 0 if liked else 2},
            behavior_text=liked_text if liked else disliked_text, reward=(likes - dislikes) / views, encoding="rates",
        ))
path = work / "records.jsonl"
path.write_text("".join(r.model_dump_json() + "\n" for r in records))

if not torch.cuda.is_available():  # a CPU run here would prove nothing about the GPU
    print(json.dumps({**row, "ok": False, "why": "no CUDA device (torch.cuda.is_available() is False)"}))
    sys.exit(1)

from core.model_prep import prepare_model
from rlhb.cli import app

try:
    prepare_model(log=lambda *_: None)
except Exception as e:
    print(json.dumps({**row, "ok": False, "why": f"model prepare failed: {type(e).__name__}: {e}"[:500]}))
    sys.exit(1)
torch.cuda.reset_peak_memory_stats()
start = time.monotonic()
args = ["train", "--algo", "rlhb", "--records", str(path), "--out", str(work / "adapters"), "--steps", "2",
        "--name", "gpu-check", "--no-progress", "--set", "max_new_tokens=16"]
captured = io.StringIO()  # the CLI's own result line goes into this check's line
try:
    with contextlib.redirect_stdout(captured):
        app(args, standalone_mode=False)
    rc = 0
except SystemExit as e:
    rc = e.code or 0
except Exception as e:  # reported, not raised: the line must come out
    rc, row["error"] = 1, f"{type(e).__name__}: {e}"[:500]
lines = [line for line in captured.getvalue().splitlines() if line.startswith("{")]
if lines:
    result = json.loads(lines[-1])
    keep = ("iteration", "seconds", "seconds_generate", "seconds_update", "kl", "d_heldout_acc")
    row["last"] = {k: v for k, v in result.get("last", {}).items() if k in keep}
peak = torch.cuda.max_memory_allocated()
# ok only if training finished AND it used the GPU (a silent CPU fallback is a failure here).
ok = rc == 0 and peak > 0 and (work / "adapters" / "gpu-check").is_dir()
print(json.dumps({**row, "ok": ok, "rc": rc, "seconds": round(time.monotonic() - start, 2),
                  "cuda_peak_mib": round(peak / 2**20, 1)}))
sys.exit(0 if ok else 1)
PY
then
    FAILED+=(train_round)
fi

# 4. vLLM smoke (optional) ----------------------------------------------------------------
if has_module vllm; then
    if ! step vllm_smoke <<'PY'
import json, sys, time
from core.model_prep import prepare_model

start = time.monotonic()
try:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(prepare_model(log=lambda *_: None)), dtype="bfloat16", enforce_eager=True,
              gpu_memory_utilization=0.3, max_model_len=512)
    out = llm.generate(["What is the capital of France?"], SamplingParams(max_tokens=8, temperature=0))
    text = out[0].outputs[0].text
    ok = bool(text.strip())
    print(json.dumps({"check": "vllm_smoke", "ok": ok, "text": text, "seconds": round(time.monotonic() - start, 2)}))
except Exception as e:
    ok = False
    print(json.dumps({"check": "vllm_smoke", "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}))
sys.exit(0 if ok else 1)
PY
    then
        FAILED+=(vllm_smoke)
    fi
else
    json check '"vllm_smoke"' ok null why '"vllm is not installed (pip install -e .[vllm])"'
fi

failed_json="[]"
if [ ${#FAILED[@]} -gt 0 ]; then failed_json="[$(printf '"%s",' "${FAILED[@]}" | sed 's/,$//')]"; fi
if [ ${#FAILED[@]} -eq 0 ]; then ok=true; else ok=false; fi
json check '"summary"' ok "$ok" failed "$failed_json" logs "$(str "$WORK")"
[ "$ok" = true ]
