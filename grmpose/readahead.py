"""Reading ahead of the network: images decoded by worker threads, video frames by one thread.

PIL and OpenCV release the GIL while they decode, so a thread that reads the next images overlaps
the network's forward pass (which also runs outside the GIL) instead of waiting for it.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from grmpose.data.coco import DataError

__all__ = ["prefetch", "read_ahead"]


def _load_or_error(load: Callable[[Path], np.ndarray], path: Path) -> np.ndarray | DataError:
    try:
        return load(path)
    except DataError as err:
        return err


def read_ahead(
    paths: Sequence[Path], load: Callable[[Path], np.ndarray], workers: int, depth: int
) -> Iterator[np.ndarray | DataError]:
    """``load(path)`` of each path, in order; a ``DataError`` is yielded (not raised) in its place.

    ``workers`` threads run up to ``depth`` loads ahead of the consumer; ``workers=0`` loads in
    the calling thread. Closing the iterator early waits for the loads already started.
    """
    if workers <= 0:
        for path in paths:
            yield _load_or_error(load, path)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="grmpose-read") as pool:
        pending: deque[Future] = deque()
        remaining = iter(paths)
        for path in itertools.islice(remaining, max(1, depth)):
            pending.append(pool.submit(_load_or_error, load, path))
        while pending:
            future = pending.popleft()
            following = next(remaining, None)
            if following is not None:
                pending.append(pool.submit(_load_or_error, load, following))
            yield future.result()


def prefetch(items: Iterable, depth: int) -> Iterator:
    """The items of ``items``, produced by one background thread up to ``depth`` ahead (video
    decoding). An exception in the producer is raised in the consumer; closing the iterator stops
    the producer."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as err:  # handed to the consumer
            put((done, err))

    thread = threading.Thread(target=produce, name="grmpose-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = slots.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
