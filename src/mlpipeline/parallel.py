"""Every core for the data stages' column-wise work, in threads.

The data stages spend their time in numpy, pandas' hashing and Arrow's Parquet writer, which
all release the GIL on large arrays: threads then run on every core without copying the data
to other processes. Results come back in the order of the inputs, so an output never depends
on the number of cores or on which thread finished first.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on (its affinity, as a container or `taskset` limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[function(item) for item in items]`, on every core; the first exception is raised."""
    items = list(items)
    if cores() == 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(cores(), len(items)), thread_name_prefix="mlpipeline") as pool:
        return list(pool.map(function, items))


def ahead(function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """`function(item)` for each item, in order, computed on every core at most one item per
    core ahead of the consumer: a producer of big chunks stays within bounded memory while
    the consumer (a file writer) works on the previous one."""
    workers = cores()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlpipeline") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
