#!/usr/bin/env bash
# The checks a GPU session runs, in order, each printing ONE JSON line on stdout
# ({"check": ..., "ok": true|false|null, ...}; ok null = skipped, with "why"), then a summary line:
#
#   1. nvidia-smi     the driver answers; GPU name, memory, driver version
#   2. torch_cuda     torch sees CUDA; bf16 support; a bf16 matmul on the GPU matches float32
#   3. train_round    a short RLHB round (`rlhb train`, 2 steps, synthetic records) on CUDA in bf16
#                     (RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16), with the CUDA peak memory it used;
#                     with GPU_CHECK_CPU_PEER=1 the same round on the CPU too, as a ratio
#   4. serving        the embedded backend (the API's generation engine) on CUDA in bf16: 32
#                     concurrent requests through the round's adapter, tokens/s; with
#                     GPU_CHECK_CPU_PEER=1 the same on the CPU in float32, as a ratio
#   5. vllm_smoke     only if vllm is installed: load the base model, generate a few tokens
#
#   bash bench/gpu_check.sh             run them (on a GPU machine, from the repository root)
#   bash bench/gpu_check.sh --dry-run   print the plan and check that the commands and Python
#                                       modules exist, running nothing (works on a CPU machine)
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_DIR (work folder,
# default a new temporary one; logs of each step are kept there), GPU_CHECK_STEP_TIMEOUT
# (seconds per step, default 300), GPU_CHECK_MODEL_DIR (an HF model folder to use instead of the
# bundled SmolLM2; a folder holding only config + tokenizer gets RANDOM weights of that shape,
# and every result line says so: right for timings, meaningless for quality), GPU_CHECK_TRAIN_SET
# (extra `--set` overrides for the round, space-separated, e.g. "discriminator=lm" where the
# MiniLM package is absent), GPU_CHECK_CPU_PEER (1: run steps 3 and 4 on the CPU as well),
# GPU_CHECK_ONLY (space-separated: run only these of train_round, serving; default both). Exit status: 0 if no check failed (skipped ones do not fail),
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

PLAN=(nvidia-smi torch_cuda train_round serving vllm_smoke)
COMMANDS=(
    "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
    "$PY -c 'torch.cuda: bf16 matmul vs float32'"
    "RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16 $PY -m rlhb.cli train --algo rlhb --steps 2 --records <synthetic 64 records>"
    "service.api.backends.embedded.EmbeddedBackend(device=auto): 32 concurrent requests x 64 tokens"
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
            serving) has_module torch && has_module service.api.backends.embedded && avail=true || avail=false; required=true ;;
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

# The model every later step uses: the bundled SmolLM2, or GPU_CHECK_MODEL_DIR (random weights of
# its shape when it holds no weights). Its path goes to $WORK/model_dir, its label to $WORK/model_label.
GPU_CHECK_DIR="$WORK" step model <<'PY' || FAILED+=(model)
import json, os, sys
from pathlib import Path

work, given = Path(os.environ["GPU_CHECK_DIR"]), os.environ.get("GPU_CHECK_MODEL_DIR", "")
row = {"check": "model"}
try:
    if not given:
        from core.model_prep import prepare_model

        path, label = prepare_model(log=lambda *_: None), "bundled SmolLM2-135M-Instruct"
    elif list(Path(given).glob("*.safetensors")):
        path, label = Path(given), f"{given} (its own weights)"
    else:  # config + tokenizer only: random weights of that shape, written once into the work folder
        import shutil

        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        path = work / "random-model"
        shutil.copytree(given, path, dirs_exist_ok=True)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(given)).save_pretrained(path)
        label = f"RANDOM weights with the shape of {Path(given).name}'s config (timings only)"
    (work / "model_dir").write_text(str(path))
    (work / "model_label").write_text(label)
    print(json.dumps({**row, "ok": True, "model": label}))
except Exception as e:
    print(json.dumps({**row, "ok": False, "why": f"{type(e).__name__}: {e}"[:500]}))
    sys.exit(1)
PY

# 3. a short train round on CUDA in bf16 (and the same on the CPU with GPU_CHECK_CPU_PEER=1) ----
train_round() {  # train_round DEVICE DTYPE NAME
RLHB_DEVICE="$1" RLHB_DTYPE="$2" GPU_CHECK_DIR="$WORK" GPU_CHECK_NAME="$3" step "$3" <<'PY'
import contextlib, io, json, os, random, sys, time
from pathlib import Path

import torch

from schemas.behavior import BehaviorRecord

work, name = Path(os.environ["GPU_CHECK_DIR"]), os.environ["GPU_CHECK_NAME"]
on_gpu = os.environ["RLHB_DEVICE"].startswith("cuda")
row = {"check": name, "device_setting": os.environ["RLHB_DEVICE"], "dtype_setting": os.environ["RLHB_DTYPE"]}
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

if on_gpu and not torch.cuda.is_available():  # a CPU run here would prove nothing about the GPU
    print(json.dumps({**row, "ok": False, "why": "no CUDA device (torch.cuda.is_available() is False)"}))
    sys.exit(1)
if not (work / "model_dir").exists():
    print(json.dumps({**row, "ok": False, "why": "no model (the model step failed)"}))
    sys.exit(1)
row["model"] = (work / "model_label").read_text()
os.environ["RLHB_MODEL_PATH"] = (work / "model_dir").read_text()

from rlhb.cli import app

if on_gpu:
    torch.cuda.reset_peak_memory_stats()
start = time.monotonic()
extra = [arg for item in os.environ.get("GPU_CHECK_TRAIN_SET", "").split() for arg in ("--set", item)]
args = ["train", "--algo", "rlhb", "--records", str(path), "--out", str(work / "adapters"), "--steps", "2",
        "--name", name, "--no-progress", "--set", "max_new_tokens=16", *extra]
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
peak = torch.cuda.max_memory_allocated() if on_gpu else 0
# ok only if training finished AND (on the GPU run) it used the GPU: a silent CPU fallback fails.
ok = rc == 0 and (peak > 0 or not on_gpu) and (work / "adapters" / name).is_dir()
print(json.dumps({**row, "ok": ok, "rc": rc, "seconds": round(time.monotonic() - start, 2),
                  "cuda_peak_mib": round(peak / 2**20, 1)}))
sys.exit(0 if ok else 1)
PY
}
wanted() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ " $GPU_CHECK_ONLY " == *" $1 "* ]]; }
if wanted train_round; then
    train_round cuda bfloat16 train_round || FAILED+=(train_round)
    if [ "${GPU_CHECK_CPU_PEER:-0}" = 1 ]; then train_round cpu float32 train_round_cpu || FAILED+=(train_round_cpu); fi
fi

# 4. the embedded serving backend on CUDA in bf16 (and on the CPU with GPU_CHECK_CPU_PEER=1) ----
serving() {  # serving DEVICE DTYPE NAME
RLHB_DEVICE="$1" RLHB_DTYPE="$2" GPU_CHECK_DIR="$WORK" GPU_CHECK_NAME="$3" step "$3" <<'PY'
import asyncio, json, os, sys, time
from pathlib import Path

import torch

work, name = Path(os.environ["GPU_CHECK_DIR"]), os.environ["GPU_CHECK_NAME"]
device, dtype = os.environ["RLHB_DEVICE"], os.environ["RLHB_DTYPE"]
row = {"check": name, "device_setting": device, "dtype_setting": dtype}
if not (work / "model_dir").exists():
    print(json.dumps({**row, "ok": False, "why": "no model (the model step failed)"}))
    sys.exit(1)
row["model"] = (work / "model_label").read_text()
from core.prompts import render_prompt
from schemas.adapters import AdapterVersion
from service.api.backends.base import GenerationRequest
from service.api.backends.embedded import EmbeddedBackend

N, TOKENS = 32, 64
adapter_dir = work / "adapters" / "train_round"  # the GPU round's adapter, if it finished
version = AdapterVersion(name="gpu-check", id=1, path=str(adapter_dir)) if adapter_dir.is_dir() else None
row["adapter"] = version.name if version else None


async def main():
    b = EmbeddedBackend((work / "model_dir").read_text(), batch_window_ms=50, max_batch_size=N,
                        device=device, dtype=dtype)
    await b.start()
    try:
        if version is not None:
            await b.load_adapter(version)
        prompts = [render_prompt(b.tokenizer, f"Tell me about topic number {i}.", "Users liked this answer.")
                   for i in range(N)]
        await b.generate(GenerationRequest(prompts[0], 4, adapter=version))  # warm-up (kernels, caches)
        start = time.perf_counter()
        out = await asyncio.gather(*[b.generate(GenerationRequest(p, TOKENS, temperature=0.7, adapter=version))
                                     for p in prompts])
        seconds = time.perf_counter() - start
        return b, out, seconds
    finally:
        await b.close()


try:
    b, out, seconds = asyncio.run(main())
    tokens = sum(r.completion_tokens for r in out)
    ok = tokens > 0 and (b.device.type == "cuda") == device.startswith("cuda")
    print(json.dumps({**row, "ok": ok, "ran_on": str(b.device), "requests": N, "completion_tokens": tokens,
                      "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
                      "versions": sorted({r.adapter_version for r in out})}))
    sys.exit(0 if ok else 1)
except Exception as e:
    print(json.dumps({**row, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}))
    sys.exit(1)
PY
}
if wanted serving; then
    serving cuda bfloat16 serving || FAILED+=(serving)
    if [ "${GPU_CHECK_CPU_PEER:-0}" = 1 ]; then serving cpu float32 serving_cpu || FAILED+=(serving_cpu); fi
fi

# 5. vLLM smoke (optional) ----------------------------------------------------------------
if has_module vllm; then
    if ! GPU_CHECK_DIR="$WORK" step vllm_smoke <<'PY'
import json, os, sys, time
from pathlib import Path

start = time.monotonic()
model_dir = (Path(os.environ["GPU_CHECK_DIR"]) / "model_dir").read_text()
try:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="bfloat16", enforce_eager=True,
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
