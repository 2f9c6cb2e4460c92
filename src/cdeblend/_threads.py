"""How many threads one fit may use (the bands and components of an iteration in parallel).

The multi-band fit (:class:`cdeblend._adam_cy.FitKernel`) splits each iteration's work over
threads: the bands' convolutions and the components' proximal updates. The results do not
depend on the count (every reduction runs in a fixed order). The count is, in this order of
precedence,

* the innermost :func:`thread_limit` block of the calling thread,
* :func:`set_num_threads`,
* the environment variable ``CDEBLEND_NUM_THREADS``,
* the cores this process may run on.

A pool that already runs several parents at once (the catalog's thread pool) limits each
worker with :func:`thread_limit`, so that the threads do not outnumber the cores. A process
forked from this one (a process pool's worker) starts at one thread: GNU OpenMP's threads
do not survive a fork, and a child entering a parallel region its parent used can hang;
:func:`set_num_threads` in the child lifts this.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["available_cores", "num_threads", "set_num_threads", "thread_limit"]

_ENV = "CDEBLEND_NUM_THREADS"
_local = threading.local()
_global: int | None = None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _check(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def _from_env() -> int | None:
    text = os.environ.get(_ENV, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{_ENV} must be a positive integer, got {text!r}") from None
    return _check(n, _ENV)


def _after_fork_in_child() -> None:
    global _global
    _global = 1


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    """The number of threads a fit started now in this thread uses."""
    n = getattr(_local, "limit", None)
    if n is not None:
        return n
    if _global is not None:
        return _global
    env = _from_env()
    return env if env is not None else available_cores()


def set_num_threads(n: int | None) -> None:
    """Set the process-wide thread count of the fits (None: back to the environment
    variable ``CDEBLEND_NUM_THREADS`` or the available cores)."""
    global _global
    _global = None if n is None else _check(n, "n")


@contextmanager
def thread_limit(n: int) -> Iterator[int]:
    """Within the block, fits started by this thread use at most ``n`` threads."""
    n = min(_check(n, "n"), num_threads())
    old = getattr(_local, "limit", None)
    _local.limit = n
    try:
        yield n
    finally:
        _local.limit = old
