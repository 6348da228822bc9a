"""An iterator's items made ahead in a background thread, so that the consumer's work overlaps with
the making of the next items (decoding images while a network runs, say)."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int, name: str = "featbench-prefetch") -> Iterator[T]:
    """`items` in order, computed by a background thread at most `depth` ahead of the caller.

    An error raised while making an item is raised here, at that item. The thread stops (after the
    item it is making) when the caller stops iterating or fails.
    """
    made: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the caller, who raises it
            put((None, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=make, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = made.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
