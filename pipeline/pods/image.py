"""Does this Python already have what the project needs? A pod image with the project's requirements
preinstalled (or the pod farm, whose pods share this machine's venv) then joins in seconds: bootstrap
and cluster.yaml's setup run `python -m pipeline.pods.image` in the synced code and skip `pip install`
when it exits 0. The code itself then runs from the synced directory (PYTHONPATH), not an install.

Each requirement of pyproject's [project] dependencies must be installed at a version its specifier
allows; extras are not followed (their packages are requirements of the named one's distribution).
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def unmet(pyproject: Path = PYPROJECT) -> list[str]:
    """The requirements this Python does not meet, each with what it has ("" when all are met)."""
    missing = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            missing.append(f"{line}: not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            missing.append(f"{line}: {have} installed")
    return missing


def main() -> int:
    missing = unmet()
    for m in missing:
        print(f"unmet: {m}")
    if not missing:
        print(f"{sys.executable} has every requirement of {PYPROJECT.name}: no pip install")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
