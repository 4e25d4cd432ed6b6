"""Atomic file writes: write to a temporary name in the same folder, then rename into place."""

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
