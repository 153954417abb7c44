#!/usr/bin/env python
"""Prepare, on a machine with network access, the folder a cluster node without it installs the GPU check from.

The node brings its own PyTorch (the site's module: another Python and torch than the project's pins). The
folder holds wheels of everything ``benchmarks/gpu_check.py`` needs beyond what the site provides (by default
torch, torchvision, timm and what they require): the project itself (``pip wheel --no-deps``), and its
requirements, resolved here for each TARGET Python and platform: the binary wheels PyPI has for them, and
pure-Python wheels built here for the packages that publish only a source archive. It also holds a copy of
the check's scripts and configs, which are not in the wheel:

  DIR/*.whl                    the wheels (one flat folder: ``--find-links DIR``)
  DIR/requirements.txt         what to install on the node: sslkit at this version
  DIR/check/benchmarks/        gpu_check.py and data_loading.py
  DIR/check/configs/           the detectron2 / mmseg / pretraining configs the rows build
  DIR/README.txt               the commands below

On the connected machine (the project's venv; pip reaches PyPI):

  .venv/bin/python tools/gpu_check_wheels.py --python 3.10 3.12 --glibc 2.28 --out gpu_check_wheels
  scp -r gpu_check_wheels node:

Where the site has no timm, give ``--site-provides torch torchvision``: timm's wheels then go in the folder.
On the node (no network; the site's Python with its torch, e.g. after ``module load pytorch``):

  python -m venv --system-site-packages ~/gpu_check_env     # sees the site's torch; or pip install --user
  ~/gpu_check_env/bin/pip install --no-index --find-links gpu_check_wheels -r gpu_check_wheels/requirements.txt
  ~/gpu_check_env/bin/python gpu_check_wheels/check/benchmarks/gpu_check.py

The rows that need mmcv's compiled ops (UperNet) or detectron2 (ViTDet) run only where the site has builds
of them for its torch; elsewhere they print the reason they were skipped.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Dict, Iterable, List, Set

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from pretrain.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
# What the check needs and the wheel does not carry: its scripts, and the configs its rows build.
CHECK_FILES = ["benchmarks/gpu_check.py", "benchmarks/data_loading.py", "configs/detectron2", "configs/mmseg",
               "configs/pretrain/moco_v2_r50_in1k.yaml"]
# The oldest glibc of the nodes: 2.28 is RHEL 8 / Rocky 8 (Ubuntu 20.04 has 2.31); 2.17 is CentOS 7.
DEFAULT_GLIBC = "2.28"
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def manylinux_platforms(glibc: str, machine: str) -> List[str]:
    """The wheel platform tags a Linux with ``glibc`` runs, newest first: pip download takes exactly the tags
    it is given, without the older ones a newer glibc also runs."""
    try:
        major, minor = map(int, glibc.split("."))
    except ValueError:
        raise ConfigError(f"glibc {glibc!r}: expected a version like 2.28 (ldd --version on the node)") from None
    if major != 2 or minor < 17:
        raise ConfigError(f"glibc {glibc}: give 2.17 or later (ldd --version on the node; CentOS 7 has 2.17)")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    return tags + [f"{LEGACY_MANYLINUX[m]}_{machine}" for m in sorted(LEGACY_MANYLINUX, reverse=True)]


def marker_environment(python: str, machine: str) -> Dict[str, str]:
    """The PEP 508 marker values of a CPython ``python`` (e.g. "3.12") on Linux on ``machine``."""
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "implementation_version": f"{python}.0", "platform_python_implementation": "CPython",
            "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "platform_machine": machine,
            "platform_release": "", "platform_version": "", "extra": ""}


def applies(req: Requirement, env: Dict[str, str], extras: Iterable[str] = ()) -> bool:
    """Whether ``req`` is required in ``env`` with ``extras`` asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def site_closure(names: Iterable[str], env: Dict[str, str]) -> Set[str]:
    """The distributions ``names`` and everything they require, from this environment's metadata: what the
    node's site installation provides (its versions may differ; its requirements are the same names)."""
    todo, seen = [canonicalize_name(n) for n in names], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # the site provides it; what it requires is the site's business
        todo += [canonicalize_name(r.name) for r in map(Requirement, requires) if applies(r, env)]
    return seen


def wheel_requirements(wheel: Path, env: Dict[str, str], extras: Iterable[str] = ()) -> List[Requirement]:
    """The requirements of ``wheel`` (its METADATA's Requires-Dist) that apply in ``env``."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    return [r for r in map(Requirement, meta.get_all("Requires-Dist") or []) if applies(r, env, extras)]


def last_line(output: str) -> str:
    """The last non-empty line of a command's output: pip says what went wrong there."""
    return next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True)


def fetch(specs: List[str], python: str, platforms: List[str], into: Path) -> None:
    """Wheels of ``specs`` (no dependencies) for ``python`` on ``platforms`` into ``into``: PyPI's binary wheels,
    else a wheel built here, accepted only if it is pure Python (it then runs on any Python)."""
    target = ["--only-binary", ":all:", "--python-version", python, "--implementation", "cp",
              *(arg for platform in platforms for arg in ("--platform", platform))]
    platform = platforms[0]
    if pip("download", "--no-deps", *target, "-d", str(into), *specs).returncode == 0:
        return
    for spec in specs:  # one at a time, to say which one has no wheel
        if pip("download", "--no-deps", *target, "-d", str(into), spec).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = pip("wheel", "--no-deps", "-w", tmp, spec)
            wheels = list(Path(tmp).glob("*.whl"))
            pure = [w for w in wheels if all(t.abi == "none" and t.platform == "any"
                                             for t in parse_wheel_filename(w.name)[3])]
            if built.returncode != 0 or not pure:
                raise UserError(f"no wheel of {spec} for Python {python} on {platform}, and no pure-Python wheel "
                                f"builds from its source ({last_line(built.stderr)}); check that pip reaches PyPI, "
                                "or give the node's --python / --glibc")
            shutil.move(str(pure[0]), into / pure[0].name)


def resolve(project_wheel: Path, extras: List[str], python: str, platforms: List[str], env: Dict[str, str],
            site: Set[str], out: Path) -> List[str]:
    """Fetch, into ``out``, the wheels of the project's requirements for ``python`` and theirs in turn, leaving
    out what the site provides. Breadth first: each round fetches the new names that the last round's wheels
    require, with every specifier met so far. Returns the names fetched."""
    pending = wheel_requirements(project_wheel, env, extras)
    done: Dict[str, Path] = {}
    extras_of: Dict[str, Set[str]] = {}  # the extras asked of each name (they add requirements)
    while pending:
        specs: Dict[str, List[str]] = {}
        for req in pending:
            name = canonicalize_name(req.name)
            if name not in site and name not in done:
                specs.setdefault(name, []).append(str(req.specifier))
                extras_of.setdefault(name, set()).update(req.extras)
        if not specs:
            break
        with tempfile.TemporaryDirectory() as tmp:
            fetch([name + ",".join(filter(None, s)) for name, s in sorted(specs.items())], python, platforms, Path(tmp))
            pending = []
            for wheel in sorted(Path(tmp).glob("*.whl")):
                name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
                done[name] = out / wheel.name
                pending += wheel_requirements(wheel, env, extras_of.get(name, ()))
                shutil.move(str(wheel), done[name])
        missing = set(specs) - set(done)
        if missing:
            raise UserError(f"pip fetched no wheel for {', '.join(sorted(missing))} (Python {python}, {platforms[0]}); "
                            "check that pip reaches PyPI, or give the node's --python / --glibc")
    return sorted(done)


def build_project_wheel(out: Path) -> Path:
    """``pip wheel --no-deps`` of the project, built from a copy of its packages (the checkout stays clean), with
    this environment's setuptools (no build isolation: nothing to download)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy(REPO / "setup.py", src)
        for package in ("pretrain", "transfer"):
            shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
        if built.returncode != 0:
            raise UserError(f"building the project's wheel failed ({last_line(built.stderr or built.stdout)}); "
                            "run pip wheel --no-deps --no-build-isolation . to see the whole output")
    return max(out.glob("sslkit-*.whl"), key=lambda p: p.stat().st_mtime)


def copy_check(out: Path) -> None:
    for rel in CHECK_FILES:
        src, dst = REPO / rel, out / "check" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dst)


def python_version(text: str) -> str:
    """An argparse ``type`` for --python: a CPython version as MAJOR.MINOR (3.10, 3.12)."""
    parts = text.split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts) or parts[0] != "3":
        raise argparse.ArgumentTypeError(f"expected a Python version like 3.10 or 3.12, got {text!r}")
    return text


def glibc_version(text: str) -> str:
    """An argparse ``type`` for --glibc: checked where it is parsed, before anything is built or written."""
    try:
        manylinux_platforms(text, "x86_64")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", nargs="+", type=python_version, default=[f"{sys.version_info[0]}.{sys.version_info[1]}"],
                   help="the node's Python version(s), e.g. 3.10 3.12 (default: this one)")
    p.add_argument("--glibc", type=glibc_version, default=DEFAULT_GLIBC,
                   help=f"the node's glibc version (ldd --version; default {DEFAULT_GLIBC}): wheels for it and older")
    p.add_argument("--machine", default="x86_64", choices=["x86_64", "aarch64"])
    p.add_argument("--site-provides", nargs="+", default=["torch", "torchvision", "timm"],
                   help="what the node's site installation has (left out with what it requires)")
    p.add_argument("--extras", nargs="*", default=[],
                   help="project extras to add, e.g. seg where the site has mmcv built for its torch")
    p.add_argument("--out", required=True, type=Path, help="the folder to fill (created)")
    args = p.parse_args(argv)

    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; give the folder to fill")
    out.mkdir(parents=True, exist_ok=True)
    project = build_project_wheel(out)
    version = parse_wheel_filename(project.name)[1]
    platforms = manylinux_platforms(args.glibc, args.machine)
    for python in args.python:
        env = marker_environment(python, args.machine)
        names = resolve(project, args.extras, python, platforms, env, site_closure(args.site_provides, env), out)
        print(f"Python {python}: {len(names)} wheels: {' '.join(names)}")
    extras = f"[{','.join(args.extras)}]" if args.extras else ""
    (out / "requirements.txt").write_text(f"sslkit{extras}=={version}\n")
    copy_check(out)
    env_python = "~/gpu_check_env/bin/python"
    node = (f"The GPU check of sslkit {version}, for Python {' '.join(args.python)} on Linux {args.machine} with "
            f"glibc {args.glibc} or later, over a site installation of {' '.join(args.site_provides)}. On the node, "
            f"beside this folder:\n\n"
            f"  python -m venv --system-site-packages ~/gpu_check_env\n"
            f"  {env_python} -m pip install --no-index --find-links {out.name} -r {out.name}/requirements.txt\n"
            f"  {env_python} {out.name}/check/benchmarks/gpu_check.py\n")
    (out / "README.txt").write_text(node)
    print(f"\n{out}\n{node}")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
