"""README.ko.md (Korean) names the same commands as README.md."""

import re

from .conftest import REPO


def commands(markdown: str) -> list[str]:
    """The commands of the fenced bash blocks: comments dropped, continued lines joined, spaces normalized."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def test_korean_readme_names_the_same_commands():
    english = (REPO / "README.md").read_text(encoding="utf-8")
    korean = (REPO / "README.ko.md").read_text(encoding="utf-8")
    assert "README.ko.md" in english[:400]  # linked from the top
    assert re.search("[\uac00-\ud7a3]", korean)
    assert sorted(commands(korean)) == sorted(commands(english))
    assert any(c.startswith("python scripts/run_lora_finetune.py") for c in commands(korean))
    assert any("jupyter lab" in c for c in commands(korean))
