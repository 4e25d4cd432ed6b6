"""What CI runs as a user would: the installed ``grmpose`` console script, and no silent skips.

The conftest hook (``tests/conftest.py``) makes a skip for a missing package that CI installs a
failure when ``CI=true``; the pytester sessions below check it on a missing ``cv2`` and ``onnxruntime``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REF = Path(__file__).parent / "data" / "eval_reference"
EXPECTED = json.loads((REF / "expected_stats.json").read_text())


def console_script() -> Path:
    """The ``grmpose`` script pip installed beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "grmpose"
    found = beside if beside.is_file() else shutil.which("grmpose")
    if found is None:
        pytest.skip("the grmpose console script is not installed (pip install -e .)")
    return Path(found)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(console_script()), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


# ------------------------------------------------------------------------------------------ console script
def test_console_script_evaluates_with_the_official_numbers(tmp_path):
    """``grmpose eval --gt --results --json`` from another folder gives the reference stats of
    pycocotools / xtcocotools (tests/data/eval_reference/expected_stats.json)."""
    case = EXPECTED["coco_example"]
    proc = run_script(
        "eval", "--gt", str(REF / case["gt"]), "--results", str(REF / case["preds"]), "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    for name, value in case["stats"].items():
        ours = {"AP_M": "APm", "AP_L": "APl", "AR_M": "ARm", "AR_L": "ARl"}.get(name, name)
        assert metrics[ours] == pytest.approx(value, abs=1e-9), name


def test_console_script_help_and_one_line_error(tmp_path):
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("summary", "synth", "train", "eval", "predict", "export", "rescore-fit", "bench", "demo"):
        assert command in proc.stdout, command
    proc = run_script("eval", "--gt", str(tmp_path / "missing.json"), "--results", "r.json", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grmpose: error:") and "missing.json" in lines[0]


# ------------------------------------------------------------------------------------------ CI skips
INNER_TESTS = """
import sys

import pytest


def test_needs_cv2(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import fails as if OpenCV were not installed
    pytest.importorskip("cv2")


def test_needs_ultralytics():
    pytest.skip("ultralytics is not installed (optional)")  # CI does not install it


def test_other_reason():
    pytest.skip("needs a CUDA device")


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    raise AssertionError
"""

INNER_MODULE_SKIP = """
import sys

import pytest

saved = sys.modules.get("onnxruntime")
sys.modules["onnxruntime"] = None  # import fails as if ONNX Runtime were not installed
try:
    pytest.importorskip("onnxruntime")
finally:
    if saved is None:
        del sys.modules["onnxruntime"]
    else:
        sys.modules["onnxruntime"] = saved


def test_never_runs():
    pass
"""

INNER_CONFTEST = (
    "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"
)


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS, test_module_skip=INNER_MODULE_SKIP)
    return pytester


def test_without_ci_missing_packages_skip(inner, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = inner.runpytest("-rfEs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(["*could not import 'cv2'*"])  # -rfEs prints the reasons


def test_with_ci_missing_ci_packages_fail(inner, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest("-rfEs", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(failed=1, skipped=2, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(["*CI=true and CI installs onnxruntime*"])  # at collection
    result.stdout.fnmatch_lines(["*CI=true and CI installs cv2*", "FAILED test_inner.py::test_needs_cv2*"])
    assert "ultralytics" in result.stdout.str()  # still a skip, with its reason


def test_ci_setting_reaches_the_test_run():
    """.ci/run sets CI=true for `make test`, whose pytest prints skip reasons (-rfEs in pyproject.toml)."""
    repo = Path(__file__).resolve().parent.parent
    ci_run = (repo / ".ci" / "run").read_text()
    assert "CI=true" in ci_run and "make test" in ci_run
    pyproject = (repo / "pyproject.toml").read_text()
    assert 'addopts = "-rfEs"' in pyproject.split("[tool.pytest.ini_options]")[1]
