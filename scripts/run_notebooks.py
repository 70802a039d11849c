"""Run the notebook series headless with papermill, in order (the main job).

    python scripts/run_notebooks.py                      # profile from LLAMA_VISION_PROFILE, else auto
    python scripts/run_notebooks.py --profile tiny --only 01,03
    python scripts/run_notebooks.py --profile tiny --fresh --update-readme   # figures + README's before/after table
    python scripts/run_notebooks.py --fresh              # delete OUTPUT_DIR/run and run_config.json first
    python scripts/run_notebooks.py --only 01 --param train_file=/abs/path/train.jsonl --param max_steps=4
    python scripts/run_notebooks.py --cell-timeout 1800  # seconds one cell may run (default 1200)

On the tiny profile the tiny base model is built first when it is not cached yet (scripts/setup.sh normally did).
Executed copies go to OUTPUT_DIR/executed/, figures to OUTPUT_DIR/figures/. Exits non-zero
with the failing notebook and cell when one fails, or when a cell gets no reply within
--cell-timeout seconds (a headless run never waits forever).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
README_IMAGES = REPO_ROOT / "README_IMAGES"
KERNEL = "python3"
CELL_TIMEOUT = int(os.environ.get("LLAMA_VISION_CELL_TIMEOUT", 1200))  # seconds one cell may run headless
START_TIMEOUT = 120  # seconds for the kernel to start (a cold start on a busy 2-core CI box can take a while)


class NotebookFailed(RuntimeError):
    pass


SOLUTIONS = NOTEBOOK_DIR / "solutions.ipynb"  # the exercises worked out; reads what the series saved


def notebooks(only: str | list[str] | None = None, solutions: bool = False, lang: str = "en") -> list[Path]:
    """The series in order; `only` = "01,03" or ["01", "03"] keeps those numbers ("solutions" names the
    solutions notebook); `solutions=True` adds it after the series. `lang="ko"`: the Korean series in
    notebooks/ko/ (made by scripts/make_korean_notebooks.py)."""
    folder = NOTEBOOK_DIR / "ko" if lang == "ko" else NOTEBOOK_DIR
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {s.strip().zfill(2) for s in (only.split(",") if isinstance(only, str) else only) if s.strip()}
        solutions = solutions or "solutions" in wanted
        paths = [p for p in paths if p.name[:2] in wanted]
    if solutions:
        paths.append(SOLUTIONS)
    if not paths:
        raise SystemExit(f"--only {only}: no notebook matches (have {[p.name[:2] for p in sorted(NOTEBOOK_DIR.glob('*.ipynb'))]})")
    return paths


def check_kernel(name: str = KERNEL) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise SystemExit(f"No Jupyter kernel named {name!r}. Install one with:\n"
                         f"  pip install ipykernel && python -m ipykernel install --user --name {name}")


def _started_cell(executed_path: Path) -> tuple[int | None, str]:
    """(index, first source line) of the last cell papermill started in an executed copy: the one
    that was running when execution stopped. Index as in the executed copy (after papermill's
    injected-parameters cell), like PapermillExecutionError.cell_index."""
    import nbformat

    try:
        nb = nbformat.read(executed_path, as_version=4)
    except Exception:  # noqa: BLE001 - nothing saved yet: report without a cell
        return None, ""
    started = [i for i, c in enumerate(nb.cells) if c.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return None, ""
    cell = nb.cells[started[-1]]
    return started[-1], next((line for line in cell.source.splitlines() if line.strip()), "")


def run_notebook(path: str | Path, executed_path: str | Path, parameters: dict | None = None,
                 cell_timeout: int | None = CELL_TIMEOUT, start_timeout: int = START_TIMEOUT,
                 cwd: str | Path | None = None) -> None:
    """Execute one notebook with papermill into `executed_path`. Raises NotebookFailed naming the
    notebook and the cell when a cell raises, when a cell gets no reply within `cell_timeout`
    seconds (None: wait forever), or when the kernel does not start or dies."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path, executed_path = Path(path), Path(executed_path)
    try:
        pm.execute_notebook(str(path), str(executed_path), kernel_name=KERNEL, cwd=str(cwd or path.parent),
                            parameters=parameters or {}, progress_bar=False, log_output=False,
                            execution_timeout=cell_timeout, start_timeout=start_timeout)
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(f"{path.name} failed in cell {err.cell_index} ({err.ename}: {err.evalue}).\n"
                             f"See the executed copy: {executed_path}") from err
    except CellTimeoutError as err:
        index, line = _started_cell(executed_path)
        raise NotebookFailed(
            f"{path.name} timed out in cell {index} ({line!r}): no reply within {cell_timeout} s "
            f"(--cell-timeout / LLAMA_VISION_CELL_TIMEOUT). Either the cell is slower than that, or the "
            f"kernel finished and its reply was lost (nbclient waits on the shell channel).\n"
            f"See the executed copy: {executed_path}") from err
    except DeadKernelError as err:
        index, line = _started_cell(executed_path)
        raise NotebookFailed(f"{path.name}: the kernel died in cell {index} ({line!r}), e.g. out of memory.\n"
                             f"See the executed copy: {executed_path}") from err
    except RuntimeError as err:
        if "Kernel didn't respond" not in str(err) and "Kernel died before replying" not in str(err):
            raise
        raise NotebookFailed(f"{path.name}: the kernel did not start within {start_timeout} s ({err})") from err


def fresh_start(out: Path, log=print) -> list[Path]:
    """What --fresh deletes in the output folder `out`: the run folder (checkpoints: notebook 04 would resume)
    and run_config.json (the choices of the last run: a rehearsal's panel values would reach the next Run All).
    Returns the deleted paths; figures, executed copies and the exported adapter are kept (each run rewrites them)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from utils.run_config import clear_run_config, run_config_path

    removed = []
    if (out / "run").exists():
        shutil.rmtree(out / "run")
        removed.append(out / "run")
    if clear_run_config(out):
        removed.append(run_config_path(out))
    for path in removed:
        log(f"--fresh: removed {path}")
    return removed


def prebuild_tiny(profile: str, log=print) -> Path | None:
    """On the tiny profile, build (and pre-train) the tiny base model before the first notebook starts, outside
    any cell timeout: on a fresh clone that skipped scripts/setup.sh it takes minutes on 2 CPU cores (more than
    the 1200 s cell timeout on a busy machine). Notebook 01's cell 1.4 then finds it. Returns its folder (None on
    the 11b profile)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from utils.setup import choose_setup

    if choose_setup(profile).profile != "tiny":
        return None
    from utils import tiny

    t0 = time.time()
    path = tiny.tiny_model_dir()
    if time.time() - t0 > 5:
        log(f"built the tiny base model in {time.time() - t0:.0f} s: {path}")
    return path


def run_series(profile: str = "auto", output_dir: str | Path | None = None, only=None,
               update_readme_images: bool = False, extra_parameters: dict | None = None,
               fresh: bool = False, log=print, cell_timeout: int | None = CELL_TIMEOUT,
               start_timeout: int = START_TIMEOUT, solutions: bool = False, lang: str = "en") -> dict[str, float]:
    """Execute the notebooks in order; returns {notebook name: seconds}. Raises NotebookFailed.

    Notebook 04 resumes from the last checkpoint in OUTPUT_DIR/run (the Colab-disconnect story);
    `fresh=True` deletes that folder and the run config first (`fresh_start`), so training starts from
    step 0 with the notebooks' parameters and nothing a rehearsal chose. Every cell gets at most
    `cell_timeout` seconds (None: no limit). Tests run this through the command line in a
    subprocess (tests/test_notebooks.py), never in the pytest process.
    """
    check_kernel()
    out = Path(output_dir or REPO_ROOT / "outputs").resolve()
    if fresh:
        fresh_start(out, log)
    prebuild_tiny(profile, log)
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    times = {}
    series = notebooks(only, solutions, lang)
    try:
        for i, path in enumerate(series, 1):
            t0 = time.time()
            log(f"[{i}/{len(series)}] {path.name} ...")
            run_notebook(path, executed / path.name, cwd=path.parent, cell_timeout=cell_timeout,
                         start_timeout=start_timeout,
                         parameters={"profile": profile, "output_dir": str(out), **(extra_parameters or {})})
            times[path.name] = time.time() - t0
            log(f"[{i}/{len(series)}] {path.name} ok in {times[path.name]:.0f} s")
    finally:
        if env_before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_before
    if update_readme_images:
        README_IMAGES.mkdir(exist_ok=True)
        for png in sorted((out / "figures").glob("*.png")):
            shutil.copy2(png, README_IMAGES / png.name)
        log(f"copied {len(list((out / 'figures').glob('*.png')))} figures to {README_IMAGES}")
        results_file = out / "before_after.json"
        if profile == "tiny" and results_file.exists():
            results = json.loads(results_file.read_text(encoding="utf-8"))
            for readme in (REPO_ROOT / "README.md", REPO_ROOT / "README.ko.md"):
                if RESULTS_START in readme.read_text(encoding="utf-8"):
                    log(f"{readme.name}: before/after table {'updated' if update_readme(readme, results) else 'unchanged'}")
    return times


RESULTS_START, RESULTS_END = "<!-- tiny-results:start -->", "<!-- tiny-results:end -->"


def results_markdown(results: dict) -> str:
    """README's before/after table from notebook 05's before_after.json (its "groups")."""
    lines = ["| rows | metric | base | with adapter |", "|---|---|---|---|"]
    for name, sides in results["groups"].items():
        n = sides["before"]["n"]
        for key, label in (("exact_match", "exact match"), ("form_rate", "right form (language, length, stops)")):
            cells = [f"{sides[s][key]:.0%} ({round(sides[s][key] * n)}/{n})" for s in ("before", "after")]
            lines.append(f"| {name} ({n}) | {label} | {cells[0]} | {cells[1]} |")
        lines.append(f"| {name} ({n}) | answer loss (nats per token) | {sides['before']['eval_loss']:.2f} | "
                     f"{sides['after']['eval_loss']:.2f} |")
    return "\n".join(lines)


def update_readme(readme: Path, results: dict) -> bool:
    """Replace the table between RESULTS_START and RESULTS_END in `readme`; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{readme}: no {RESULTS_START} ... {RESULTS_END} block to update")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    new = f"{head}{RESULTS_START}\n{results_markdown(results)}\n{RESULTS_END}{tail}"
    readme.write_text(new, encoding="utf-8")
    return new != text


def parse_param(text: str) -> tuple[str, object]:
    """`--param key=value`: the value is read as JSON when it parses (4, true, [1, 2]), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("tiny", "11b", "auto"),
                        default=os.environ.get("LLAMA_VISION_PROFILE", "auto"))
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "outputs"))
    parser.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--fresh", action="store_true",
                        help="delete OUTPUT_DIR/run and OUTPUT_DIR/run_config.json first: notebook 04 trains from step 0 "
                             "and no earlier run's choices (LoRA panel, slider) are taken")
    parser.add_argument("--update-readme-images", "--update-readme", action="store_true",
                        help="copy OUTPUT_DIR/figures/*.png to README_IMAGES/ and (tiny profile) write notebook 05's "
                             "before/after table into README.md / README.ko.md")
    parser.add_argument("--lang", choices=("en", "ko"), default="en",
                        help="ko: run the Korean series (notebooks/ko/) instead of the English one")
    parser.add_argument("--solutions", action="store_true",
                        help="also run notebooks/solutions.ipynb (the exercises worked out) after the series")
    parser.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                        help="extra notebook parameter (repeatable), e.g. --param max_steps=4")
    parser.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT,
                        help="seconds one cell may run before the run fails (0: no limit; default %(default)s)")
    parser.add_argument("--start-timeout", type=int, default=START_TIMEOUT,
                        help="seconds the kernel may take to start (default %(default)s)")
    args = parser.parse_args(argv)
    t0 = time.time()
    log = lambda *a: print(*a, flush=True)  # noqa: E731 - progress shows up at once when piped
    try:
        times = run_series(args.profile, args.output_dir, args.only, args.update_readme_images,
                           extra_parameters=dict(args.param), fresh=args.fresh, log=log, solutions=args.solutions, lang=args.lang,
                           cell_timeout=args.cell_timeout or None, start_timeout=args.start_timeout)
    except NotebookFailed as err:
        print(f"\nFAILED: {err}", file=sys.stderr)
        return 1
    print(f"all {len(times)} notebook(s) ran in {time.time() - t0:.0f} s ("
          + ", ".join(f"{name[:2]}: {sec:.0f} s" for name, sec in times.items())
          + f"); executed copies in {Path(args.output_dir).resolve() / 'executed'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
