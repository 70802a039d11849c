"""The torchvision image processor, as on Colab.

AutoProcessor picks the torchvision `MllamaImageProcessor` whenever torchvision can be imported (always
on Colab) and `MllamaImageProcessorPil` otherwise (this CPU machine). The tests marked
`image_processing` (collator and processor tests, here and in other files) run in this pytest process
with the PIL one, and test_image_processing_tests_pass_with_torchvision reruns them in a subprocess
with a real torchvision (tests/torchvision_env.py; scripts/setup.sh builds .cache/torchvision-venv).
"""

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.torchvision_env import EXPECT_VAR, HOW_TO_INSTALL, torchvision_python

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "data/images/train_count_02.png"


def backend(image_processor) -> str:
    return "pil" if type(image_processor).__name__.endswith("Pil") else "torchvision"


def python_or_skip() -> tuple[str, dict]:
    """(python, environment) with torchvision; without it the test fails under CI (env CI set), skips elsewhere."""
    found = torchvision_python()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(HOW_TO_INSTALL)
        pytest.skip(HOW_TO_INSTALL)
    return found


def image():
    with Image.open(IMAGE) as img:
        return img.convert("RGB")


def test_autoprocessor_picks_the_torchvision_image_processor(tiny_dir):
    code = ("import sys; from transformers import AutoProcessor; ip = AutoProcessor.from_pretrained(sys.argv[1]).image_processor; "
            "print(type(ip).__module__ + '.' + type(ip).__name__)")
    python, env = python_or_skip()
    done = subprocess.run([python, "-c", code, tiny_dir], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    name = done.stdout.strip().splitlines()[-1]
    assert name == "transformers.models.mllama.image_processing_mllama.MllamaImageProcessor", name


def test_image_processing_tests_pass_with_torchvision(tiny_dir):
    """Reruns every test marked image_processing with torchvision; conftest.py checks the backend in that run."""
    python, env = python_or_skip()
    cmd = [python, "-m", "pytest", "-m", "image_processing", "-p", "no:cacheprovider", "-q", "--durations=5"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    print(output[-3000:])  # shown with -s, or on failure
    assert done.returncode != 5, f"no test is marked image_processing:\n{output[-2000:]}"
    assert done.returncode == 0, f"image_processing tests failed with torchvision ({' '.join(cmd[1:])}):\n{output[-6000:]}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed[1]) >= 1, output[-2000:]


@pytest.mark.image_processing
def test_backend_is_the_expected_one(processor):
    torchvision = os.environ.get(EXPECT_VAR) == "1" or importlib.util.find_spec("torchvision") is not None
    assert backend(processor.image_processor) == ("torchvision" if torchvision else "pil")


@pytest.mark.image_processing
def test_two_image_rows_give_a_batch_of_two(processor):
    """Both backends: one image per row, two rows -> every image tensor has batch dimension 2."""
    prompt = "<|image|><|begin_of_text|>How many bars?"
    out = processor(text=[prompt, prompt], images=[[image()], [image()]], return_tensors="pt")
    assert out["input_ids"].shape[0] == 2
    assert out["pixel_values"].shape[:2] == (2, 1)  # (batch, images per row, tiles, channels, height, width)
    assert out["aspect_ratio_ids"].shape == (2, 1) and out["aspect_ratio_mask"].shape[:2] == (2, 1)
    assert out["cross_attention_mask"].shape[0] == 2


@pytest.mark.image_processing
def test_rows_without_an_image_break_the_torchvision_processor(processor):
    """Documents an upstream bug (transformers 5.24): the torchvision MllamaImageProcessor mishandles a row
    with no image in a batch; the PIL one pads it. The project's Collator never sends such batches (a batch
    is all-image or all-text, utils.batching). If this test fails on torchvision, the bug is fixed upstream."""
    ip = processor.image_processor
    img = image()
    if backend(ip) == "pil":
        for images in ([[img], []], [[], [img]]):
            out = ip(images=images, return_tensors="pt")
            assert out["pixel_values"].shape[0] == out["aspect_ratio_ids"].shape[0] == 2
        return
    try:
        out = ip(images=[[img], []], return_tensors="pt")
        consistent = out["pixel_values"].shape[0] == out["aspect_ratio_ids"].shape[0]
    except Exception:  # noqa: BLE001 - raising is the other form of the bug
        consistent = False
    assert not consistent, "[[img], []] now gives matching pixel_values/aspect_ratio_ids: fixed upstream?"
    with pytest.raises(IndexError):
        ip(images=[[], [img]], return_tensors="pt")
