"""Check that every pin of a lock has a wheel for a Python version on manylinux x86_64.

    python requirements/check_wheels.py --python-version 3.12 requirements/lock-py312.txt

For each ``name==version`` line, pip resolves that one distribution (``--no-deps``) as it would
for the target interpreter (``--only-binary=:all: --python-version X --implementation cp``) on
any manylinux tag a Debian bookworm image (glibc 2.36) accepts, without installing anything
(``--dry-run``; pip fetches only metadata). A pin without a wheel fails the check unless the lock
declares it in a ``# source-builds: name ...`` line (pip then builds it from its source
distribution, with the toolchain the lock's ``# build-deps:`` line names). Needs the package
index; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)$")
SOURCE_BUILDS = re.compile(r"^#\s*source-builds:\s*(.*)$")
# Debian bookworm has glibc 2.36: every manylinux tag up to it, and the legacy aliases.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> tuple[list[str], set[str]]:
    """The ``name==version`` pins of a lock and the names it declares as source builds."""
    pins, source_builds = [], set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if match := SOURCE_BUILDS.match(line):
            source_builds |= {_norm(n) for n in match[1].split()}
        elif PIN.match(line):
            pins.append(line)
    return pins, source_builds


def wheel_for(pin: str, python_version: str, work: Path) -> str | None:
    """The file name of the wheel pip would pick for ``pin``, or None when there is none."""
    report = work / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
               "--ignore-installed", "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", "--target", str(work / "target"), "--report",
               str(report), *[arg for p in PLATFORMS for arg in ("--platform", p)], pin]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    [item] = json.loads(report.read_text())["install"]
    return str(item["download_info"]["url"]).rsplit("/", 1)[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per pin; exit 1 if a pin has no wheel and is not a declared source build."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="e.g. 3.12")
    parser.add_argument("lock", type=Path)
    args = parser.parse_args(argv)
    pins, source_builds = read_lock(args.lock)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for pin in pins:
            wheel = wheel_for(pin, args.python_version, Path(tmp))
            name = _norm(pin.split("==", 1)[0])
            if wheel:
                print(f"ok      {pin}  {wheel}")
            elif name in source_builds:
                print(f"source  {pin}  (no wheel; built from its sdist, declared in the lock)")
            else:
                print(f"MISSING {pin}")
                failures.append(pin)
    print(f"{len(pins)} pins, {len(failures)} without a wheel for Python {args.python_version}"
          + (f": {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
