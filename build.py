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
import hashlib
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


# Line 2 of the launcher runs this with `python -S -c`, the file's own path first in its arguments.
# When shiv has already unpacked this build's site-packages (every start after the first), it imports
# the CLI straight from there, as shiv's bootstrap would after its own work; that bootstrap imports
# compileall, zipfile, subprocess, json and more (~60 ms of a ~450 ms start measured here), and running
# the zip costs runpy and zipimport besides. Otherwise (the first start, or any SHIV_* setting other
# than SHIV_ROOT) it runs the zip as `python file` does, and shiv's bootstrap unpacks and starts it.
# The directory is shiv's: ~/.shiv or $SHIV_ROOT, then the file's name and the build id.
# sys.path[0] ('' for -c) is dropped: the current directory must not shadow what the file carries.
_FAST_START = """import os,sys
e=sys.argv[1];del sys.argv[0],sys.path[0]
r=os.path.expanduser(os.environ.get("SHIV_ROOT") or "~/.shiv")
s=os.path.join(r,os.path.basename(os.path.realpath(e))+"_{build_id}","site-packages")
if os.path.isdir(s) and not [k for k in os.environ if k[:5]=="SHIV_" and k!="SHIV_ROOT"]:
 sys.path.append(s);from snackbase.cli import main;sys.exit(main())
sys.path.insert(0,e);import runpy;runpy.run_path(e,run_name="__main__")"""


def launcher(python: str, build_id: str) -> str:
    """What runs the file: the interpreter it was built with, by its absolute path, or where that is
    missing (the file copied to another machine) `python3` on PATH. A PATH lookup can cost a start
    dearly: pyenv's `python3` is a bash script that took ~90 ms to find the real one (the whole start
    took ~530 ms on that machine). -S: the file runs only what it carries; the machine's site-packages
    and `.pth` files (one imported certifi, ~50 ms) stay out. Python then runs `_FAST_START`; the zip
    follows these lines, and sh never reads that far (`exec`)."""
    code = _FAST_START.format(build_id=build_id)
    assert "'" not in code  # it goes between single quotes
    return f'/bin/sh\nx={shlex.quote(python)};[ -x "$x" ]||x=python3;exec "$x" -S -c \'{code}\' "$0" "$@"'


def build_id(site: Path) -> str:
    """A hash of every file's path and bytes: the same site-packages gives the same id (reproducible),
    any change a new one, so a new build never starts from an older build's unpacked copy."""
    digest = hashlib.sha256()
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(site)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def zip_app(site: Path, output: Path) -> None:
    # Our own build id, because the launcher must know it before shiv writes the file (shiv warns that a
    # custom id must be unique per build: this one is, as a hash of the contents).
    build = build_id(site)
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
            _SHIV_SHEBANG,
            "--compressed",
            "--reproducible",
            "--compile-pyc",
            "--build-id",
            build,
        ],
        check=True,
    )
    put_launcher(output, launcher(os.path.realpath(sys.executable), build))


# shiv writes "#!" + this + newline before the zip, and refuses more than the 128 bytes that Linux reads
# of a shebang line; the launcher's first line is this one, and its second is put in after shiv.
_SHIV_SHEBANG = "/bin/sh"


def put_launcher(output: Path, script: str) -> None:
    """Puts the whole launcher in front of the zip in place of shiv's one line. Readers of a zip (Python's
    zipfile and zipimport among them) find its entries from its end record, wherever the zip begins."""
    head = f"#!{_SHIV_SHEBANG}\n".encode()
    data = output.read_bytes()
    assert data.startswith(head), "shiv's output does not start with the expected shebang"
    output.write_bytes(f"#!{script}\n".encode() + data[len(head) :])


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
