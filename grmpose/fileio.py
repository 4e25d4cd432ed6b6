"""File helpers: atomic writes (a temporary name in the same folder, then a rename) and output-folder checks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    On an exception the temporary file is deleted and ``path`` is left as it was, so a crash never
    leaves a half-written file. The name is ``.<name>.<pid>.<random>.tmp`` (hidden, same folder, so
    the rename is atomic on one file system); the parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_output_dir(out: str | Path) -> None:
    """Fail early (before loading a model) when ``out`` cannot be created or written.

    Raises ``NotADirectoryError`` or ``PermissionError`` with a message naming the folder.
    """
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"cannot create output folder {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {out} is not writable (no write permission on {probe})")
