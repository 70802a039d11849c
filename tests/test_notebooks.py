"""The notebook series: static checks of every committed notebook, and one run of the whole
series on the tiny profile through scripts/run_notebooks.py (the notebook execution test)."""

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")
BADGE = "https://colab.research.google.com/github/llama32-vision-lora/llama32-vision-lora/blob/main/notebooks/"


def test_series_is_complete():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


def python_source(cell_source: str) -> str:
    """Replace IPython `!shell` / `%magic` lines with `pass` (same indentation) so ast can parse the cell."""
    return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in cell_source.splitlines())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata, "widget state committed"
    text = path.read_text(encoding="utf-8")
    assert not TOKEN.search(text), "token-like string in the notebook"
    assert ".ipynb_checkpoints" not in text
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"outputs committed: {cell.source[:60]!r}"
        assert cell.execution_count is None
        ast.parse(python_source(cell.source))
        assert ".to(\"cuda\")" not in cell.source and "huggingface-cli login" not in cell.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert 'profile = "auto"' in tagged[0].source and 'output_dir = "../outputs"' in tagged[0].source
    assert BADGE + path.name in nb.cells[0].source
    tail = "\n".join(c.source for c in nb.cells[-3:] if c.cell_type == "markdown")
    for heading in ("## Summary", "## Exercises", "## Next"):
        assert heading in tail, f"missing {heading}"


def test_run_notebooks_only_filter():
    from run_notebooks import notebooks

    assert [p.name[:2] for p in notebooks("01,3")] == ["01", "03"]


def test_series_runs_on_tiny_profile(tmp_path):
    """Executes all five notebooks (about 5 minutes on 2 CPU cores) and checks what they leave on disk."""
    from run_notebooks import run_series

    times = run_series(profile="tiny", output_dir=tmp_path, log=lambda *a, **k: None)
    assert len(times) == 5
    for name in ("data_report.json", "lora_config.json", "memory_report.json", "before_after.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/lora_adapter_state_dict.pt",
                 "run/loss_history.json", "run/train_settings.json"):
        assert (tmp_path / name).is_file(), name
    history = json.loads((tmp_path / "run/loss_history.json").read_text())
    train = [loss for _, loss in history["train"]]
    quarter = max(len(train) // 4, 1)
    assert sum(train[-quarter:]) / quarter < sum(train[:quarter]) / quarter  # logged train loss is noisy
    assert history["eval"][-1][1] < history["eval"][0][1]
    for fig in ("token_lengths", "truncation", "memory_plan", "loss", "loss_live", "samples"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    results = json.loads((tmp_path / "before_after.json").read_text())
    assert results["max_logit_difference"] < 1e-3
    assert results["after"]["eval_loss"] < results["before"]["eval_loss"]
    assert len(list((tmp_path / "executed").glob("*.ipynb"))) == 5
