"""The floors of docs/architecture.md, enforced: the import-linter contract in pyproject.toml
passes on the tree, fails on each import the architecture forbids (function-level ones too),
and serving the API does not drag torch in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "core", "service", "trainer", "rlhb")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_tree_keeps_the_floors():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


# (module that must not import, what it imports) -- each a violation the old tree had.
FORBIDDEN = [
    ("service/api/answer.py", "trainer.policy"),  # a process importing another process
    ("trainer/records.py", "service.aggregator.fold"),
    ("service/api/app.py", "service.aggregator.consumer"),
    ("core/settings.py", "service.aggregator.consumer"),  # the core importing a process
    ("service/api/cli.py", "rlhb.cli"),  # a process importing the top
    ("core/registry.py", "rlhb.demo"),
]


@pytest.mark.parametrize(("module", "target"), FORBIDDEN, ids=[f"{m}->{t}" for m, t in FORBIDDEN])
def test_the_contract_catches_a_forbidden_function_level_import(tmp_path, module, target):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n\ndef _sneaky():\n    import {target}  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and target in result.stdout


def test_importing_the_api_app_does_not_import_torch():
    code = (
        "import sys, service.api.app, service.api.routes.chat, service.api.routes.feedback;"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules);"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
