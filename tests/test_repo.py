"""Repository hygiene: no citation of a design document that is not in the repository."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# "DESIGN.md", "DESIGN:", "(DESIGN)", "DESIGN's": the upper-case word is only ever that citation here.
CITATION = re.compile(r"\bDESIGN\b")
# Docs of the project's history (a changelog) may say that the citation existed; this file names it.
EXEMPT = re.compile(r"(?i)(^|/)(changelog|history)[^/]*$|^tests/test_repo\.py$")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in names.decode().split("\0"):
        path = REPO / name
        if not name or EXEMPT.search(name) or not path.is_file():
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binary files
            continue


def test_no_file_cites_the_missing_design_document():
    assert (REPO / "docs" / "facts.md").is_file()
    citing = sorted(f"{name}:{text[:m.start()].count(chr(10)) + 1}"
                    for name, text in tracked_text_files() for m in CITATION.finditer(text))
    assert not citing, ("these tracked files cite DESIGN / DESIGN.md, which is not in the repository; "
                        "state the fact or point to docs/facts.md: " + ", ".join(citing))


def test_the_check_sees_a_citation():
    assert CITATION.search("see DESIGN.md") and CITATION.search("(DESIGN: 40 TFLOP)")
    assert CITATION.search("DESIGN's estimate") and not CITATION.search("design notes, DESIGNER")
    assert EXEMPT.search("docs/CHANGELOG.md") and not EXEMPT.search("utils/train.py")
