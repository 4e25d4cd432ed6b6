"""Provenance of benchmark results: every results JSON records the git revision and the command.

Each writer in ``benchmarks/`` calls ``write_results_json`` (or, for a dict it writes itself,
``provenance``), so a figure in ``benchmarks/results/`` can be traced to the code that made it and
re-made with one command.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grmpose.fileio import atomic_path
from grmpose.train import git_revision

__all__ = ["command_line", "provenance", "write_results_json"]


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that re-makes a result of ``module`` (a ``python -m`` module name).

    Args:
        module: the benchmark module, e.g. ``"benchmarks.decoders"``.
        argv: the arguments its ``main`` parsed. ``None``: this process's own arguments when it
            runs ``python -m <module>``; otherwise (a library call from another program) the
            process's command line, prefixed with ``called from:``.
    """
    if argv is not None:
        return shlex.join(["python", "-m", module, *map(str, argv)])
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == module:
        return shlex.join(["python", "-m", module, *sys.argv[1:]])
    return "called from: " + shlex.join(["python", *sys.argv])


def provenance(module: str, argv: Sequence[str] | None = None, command: str | None = None) -> dict[str, str]:
    """``{"git": revision (with "-dirty" for uncommitted changes), "command": command_line(...)}``;
    ``command`` names the command that ran instead (a benchmark run as part of another one)."""
    return {"git": git_revision(), "command": command or command_line(module, argv)}


def write_results_json(
    path: str | Path,
    record: dict,
    module: str,
    argv: Sequence[str] | None = None,
    indent: int = 2,
    default: Callable | None = str,
    command: str | None = None,
) -> dict:
    """Write ``record`` to ``path`` as JSON with a ``provenance`` entry, atomically.

    Returns:
        the record as written (``record`` itself, with ``provenance`` set).
    """
    record["provenance"] = provenance(module, argv, command)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=indent, default=default))
    return record
