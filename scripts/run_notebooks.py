"""Run the notebook series headless with papermill, in order (the main job).

    python scripts/run_notebooks.py                      # profile from LLAMA_VISION_PROFILE, else auto
    python scripts/run_notebooks.py --profile tiny --only 01,03
    python scripts/run_notebooks.py --profile tiny --update-readme-images
    python scripts/run_notebooks.py --fresh              # delete OUTPUT_DIR/run first (else training resumes)

Executed copies go to OUTPUT_DIR/executed/, figures to OUTPUT_DIR/figures/. Exits non-zero
with the failing notebook and cell when one fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
README_IMAGES = REPO_ROOT / "README_IMAGES"
KERNEL = "python3"


class NotebookFailed(RuntimeError):
    pass


def notebooks(only: str | list[str] | None = None) -> list[Path]:
    """The series in order; `only` = "01,03" or ["01", "03"] keeps those numbers."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {s.strip().zfill(2) for s in (only.split(",") if isinstance(only, str) else only) if s.strip()}
        paths = [p for p in paths if p.name[:2] in wanted]
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


def run_series(profile: str = "auto", output_dir: str | Path | None = None, only=None,
               update_readme_images: bool = False, extra_parameters: dict | None = None,
               fresh: bool = False, log=print) -> dict[str, float]:
    """Execute the notebooks in order; returns {notebook name: seconds}. Raises NotebookFailed.

    Notebook 04 resumes from the last checkpoint in OUTPUT_DIR/run (the Colab-disconnect story);
    `fresh=True` deletes that folder first so training starts from step 0.
    """
    import papermill as pm

    check_kernel()
    out = Path(output_dir or REPO_ROOT / "outputs").resolve()
    if fresh and (out / "run").exists():
        shutil.rmtree(out / "run")
        log(f"--fresh: removed {out / 'run'}")
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    times = {}
    series = notebooks(only)
    try:
        for i, path in enumerate(series, 1):
            t0 = time.time()
            log(f"[{i}/{len(series)}] {path.name} ...")
            try:
                pm.execute_notebook(str(path), str(executed / path.name), kernel_name=KERNEL, cwd=str(NOTEBOOK_DIR),
                                    parameters={"profile": profile, "output_dir": str(out), **(extra_parameters or {})},
                                    progress_bar=False, log_output=False)
            except pm.PapermillExecutionError as err:
                raise NotebookFailed(f"{path.name} failed in cell {err.cell_index} ({err.ename}: {err.evalue}).\n"
                                     f"See the executed copy: {executed / path.name}") from err
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
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("tiny", "11b", "auto"),
                        default=os.environ.get("LLAMA_VISION_PROFILE", "auto"))
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "outputs"))
    parser.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--fresh", action="store_true", help="delete OUTPUT_DIR/run first so notebook 04 trains from step 0")
    parser.add_argument("--update-readme-images", action="store_true", help="copy OUTPUT_DIR/figures/*.png to README_IMAGES/")
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        times = run_series(args.profile, args.output_dir, args.only, args.update_readme_images, fresh=args.fresh)
    except NotebookFailed as err:
        print(f"\nFAILED: {err}", file=sys.stderr)
        return 1
    print(f"all {len(times)} notebook(s) ran in {time.time() - t0:.0f} s; executed copies in "
          f"{Path(args.output_dir).resolve() / 'executed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
