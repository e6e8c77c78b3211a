"""Independent runs side by side on a CPU.

A tiny-profile study trains many small models that do not depend on one another: notebook 01's
grid of adapters, notebook 03's compositions. One such model gains little from a second thread
(on 2 cores, ``make bench-threads``: a QLoRA step of the zoo's llama-m shape 1.4-1.6x, greedy
answering 1.1-1.2x), so on a CPU they train in spawned processes, one per core. Each run gets
exactly ``threads`` torch threads wherever it runs, in a worker or in this process: torch sums
some gradients in another order with another thread count, so a run's numbers would otherwise
depend on how many ran beside it or how many were already cached. On a GPU the runs go one by
one in this process. A worker ends as soon as the process that started it is gone, however it
ended, so that a killed run leaves no worker behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kilib import runtime
from kilib.runtime import KilibError

Call = tuple[Callable[..., Any], tuple, dict]  # a module-level function (it is pickled), its args and kwargs


def cpu_threads() -> int | None:
    """torch's thread count where a training run's numbers depend on it (on a CPU), for its
    cache key; None on a GPU."""
    return None if runtime.cuda_available() else torch.get_num_threads()


def _exit_with_parent(parent: int) -> None:
    """A worker's initializer: a daemon thread ends the worker as soon as the process that
    started it is gone (killed, even with SIGKILL), so that no worker outlives its run and goes
    on training into the cache beside a rerun."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="kilib-exit-with-parent", daemon=True).start()


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, threads: int) -> Any:
    runtime.set_threads(threads)
    return fn(*args, **kwargs)


def side_by_side(
    calls: Sequence[Call], workers: int = 0, threads: int = 1, done: Callable[[int, int, Any], None] | None = None
) -> list[Any]:
    """Each call's result, in the calls' order. ``workers``: processes at once (0: one per
    ``threads`` usable cores on a CPU, 1 on a GPU); with one, the calls run here. ``done(i,
    finished, result)`` is called as each call ``i`` finishes (``finished`` counts them)."""
    if threads < 1:
        raise KilibError(f"threads must be at least 1, got {threads}")
    if workers < 0:
        raise KilibError(f"workers={workers}: use 0 for one per CPU core, or n > 0 for n side by side")
    if workers == 0:
        workers = 1 if runtime.cuda_available() else max(1, runtime.usable_cores() // threads)
    workers = max(1, min(workers, len(calls)))
    results: list[Any] = [None] * len(calls)
    if workers == 1:
        saved = torch.get_num_threads()
        try:
            for i, (fn, args, kwargs) in enumerate(calls):
                results[i] = fn(*args, **kwargs) if runtime.cuda_available() else _run(fn, args, kwargs, threads)
                if done:
                    done(i, i + 1, results[i])
        finally:
            torch.set_num_threads(saved)
        return results
    pool = cf.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futures = {pool.submit(_run, fn, args, kwargs, threads): i for i, (fn, args, kwargs) in enumerate(calls)}
        for finished, future in enumerate(cf.as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            if done:
                done(i, finished, results[i])
    except cf.process.BrokenProcessPool:
        raise KilibError(f"a worker process died (out of memory?): set WORKERS below {workers}") from None
    finally:  # on an error, do not wait for the rest before saying so
        pool.shutdown(wait=True, cancel_futures=True)
    return results
