"""Test-suite hooks: under CI, a skip for a missing package that CI installs is a failure.

CI (``.ci/run`` sets ``CI=true``) installs every optional extra (``.[onnx,video,tensorboard,dev]``).
There, a test that skips because one of ``CI_PACKAGES`` cannot be imported (``pytest.importorskip``,
or a ``pytest.skip`` whose reason names the package as missing) would hide a broken install, so
the hooks below turn that skip, at collection or in a test, into a failure. Skips for packages CI
does not install (ultralytics) stay skips. Skip reasons are printed by ``-rfEs`` (pyproject.toml).
"""

from __future__ import annotations

import os
import re

import pytest

pytest_plugins = ["pytester"]  # tests/test_ci.py runs small pytest sessions in-process

# Import names of the optional packages CI installs (the onnx, video and tensorboard extras),
# and the installed console script.
CI_PACKAGES = ("onnxruntime", "onnx", "onnxscript", "cv2", "tensorboard", "grmpose console script")

_MISSING = re.compile(r"could not import|not installed|no module named", re.IGNORECASE)


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value (``true``, ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_ci_package(reason: str) -> str | None:
    """The CI package a skip reason says is missing, or None.

    ``pytest.importorskip`` words it ``could not import 'cv2': No module named 'cv2'``.
    """
    if not _MISSING.search(reason):
        return None
    for name in CI_PACKAGES:
        if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", reason):
            return name
    return None


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_ci_package_missing(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (report.skipped and in_ci()) or getattr(report, "wasxfail", None) is not None:
        return
    reason = _skip_reason(report)
    name = missing_ci_package(reason)
    if name is not None:
        report.outcome = "failed"
        report.longrepr = f"CI=true and CI installs {name}, but the test skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_if_ci_package_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_if_ci_package_missing(outcome.get_result())
