"""`python -m pipeline.pods.image`: whether this Python meets every requirement of pyproject (then
bootstrap and cluster.yaml's setup skip pip)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.pods.image import unmet

ROOT = Path(__file__).resolve().parents[3]


def test_this_venv_meets_the_projects_requirements_and_says_so():
    assert unmet() == []
    r = subprocess.run([sys.executable, "-m", "pipeline.pods.image"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("has every requirement of pyproject.toml: no pip install")


def test_a_missing_package_or_a_version_out_of_range_is_unmet(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["pyyaml>=6.0", "no-such-package-xyz>=1", "numpy>=999", '
        '"pydantic>=2; python_version < \'3\'"]\n'
    )
    import numpy

    assert unmet(tmp_path / "pyproject.toml") == ["no-such-package-xyz>=1: not installed", f"numpy>=999: {numpy.__version__} installed"]
