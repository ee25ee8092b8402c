"""Builds ONE executable file, dist/snackbase, with shiv: the package, its dependencies and the admin UI.

    python build.py [--output PATH] [--no-smoke]

Steps: stage a copy of the package with admin_ui/dist bundled as snackbase/ui_dist; pip-install it and
its dependencies into a staging site-packages; zip that with shiv behind a two-line `/bin/sh`
launcher (`launcher` below); smoke-run `dist/snackbase version`. (It cannot be ./snackbase in the
checkout: that name is the package directory. Copied anywhere, the file runs as `./snackbase serve`.)
Compiled dependencies (apsw, uvloop, msgspec, argon2) are wheels for the Python and platform running
this script, which the build prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build"
# Only what the server needs at run time goes into the file; pip/setuptools metadata stays out.
_PRUNE = ("__pycache__", "*.pyi", "pip", "pip-*", "setuptools", "setuptools-*", "_distutils_hack", "bin")


def stage_source(stage: Path) -> Path:
    src = stage / "src"
    shutil.copytree(ROOT / "snackbase", src / "snackbase", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = ROOT / "admin_ui" / "dist"
    if (dist / "index.html").is_file():
        shutil.copytree(dist, src / "snackbase" / "ui_dist")
    else:
        print("note: admin_ui/dist is missing; building without the admin UI", file=sys.stderr)
    return src


def install_site_packages(src: Path, site: Path) -> None:
    # --no-build-isolation: build our pure-Python package with the setuptools already installed here.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
    )
    for pattern in _PRUNE:
        for path in site.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for cache in site.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


# shiv writes "#!" + this + newline before the zip; Linux reads at most this much of a shebang.
_SHEBANG_MAX = 128


def launcher(python: str) -> str:
    """What runs the file: the interpreter it was built with, by its absolute path, or where that is
    missing (the file copied to another machine) `python3` on PATH. A PATH lookup can cost a start
    dearly: pyenv's `python3` is a bash script that took ~90 ms to find the real one (the whole start
    took ~530 ms on that machine). -S: the file runs only what it carries; the machine's site-packages
    and `.pth` files (one imported certifi, ~50 ms) stay out. Python finds the zip after these lines."""
    quoted = shlex.quote(python)
    script = f'/bin/sh\nx={quoted};[ -x "$x" ]||x=python3;exec "$x" -S "$0" "$@"'
    return script if len(script) <= _SHEBANG_MAX else "/usr/bin/env -S python3 -S"


def zip_app(site: Path, output: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "shiv",
            "--site-packages",
            str(site),
            "-e",
            "snackbase.cli:main",
            "-o",
            str(output),
            "-p",
            launcher(os.path.realpath(sys.executable)),
            "--compressed",
            "--reproducible",
            "--compile-pyc",
        ],
        check=True,
    )


def smoke(output: Path) -> None:
    result = subprocess.run([str(output), "version"], capture_output=True, text=True, check=True, cwd="/")
    print(f"smoke: {output} version -> {result.stdout.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default=str(ROOT / "dist" / "snackbase"), help="where to write the executable"
    )
    parser.add_argument("--no-smoke", action="store_true", help="skip running the result")
    args = parser.parse_args()
    output = Path(args.output).resolve()
    shutil.rmtree(BUILD, ignore_errors=True)
    site = BUILD / "site"
    install_site_packages(stage_source(BUILD), site)
    output.parent.mkdir(parents=True, exist_ok=True)
    zip_app(site, output)
    size_mb = output.stat().st_size / 1_000_000
    target = (
        f"CPython {platform.python_version()} ({sysconfig.get_platform()}, {sys.implementation.cache_tag})"
    )
    print(f"built {output} — {size_mb:.1f} MB, for {target}")
    if not args.no_smoke:
        smoke(output)


if __name__ == "__main__":
    main()
