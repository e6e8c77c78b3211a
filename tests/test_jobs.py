import pytest
import torch

from kilib.jobs import side_by_side
from kilib.runtime import KilibError


def test_side_by_side_keeps_the_calls_order_and_reports_each():
    seen = []
    calls = [(pow, (2, n), {}) for n in range(5)]
    assert side_by_side(calls, workers=2, done=lambda i, finished, r: seen.append((i, finished, r))) == [1, 2, 4, 8, 16]
    assert sorted((i, r) for i, _, r in seen) == [(n, 2**n) for n in range(5)]
    assert sorted(f for _, f, _ in seen) == [1, 2, 3, 4, 5]
    assert side_by_side([]) == []


def test_every_call_gets_its_threads_in_a_worker_and_here(monkeypatch):
    monkeypatch.setattr("kilib.runtime.cuda_available", lambda: False)  # the CPU path, on any machine
    before = torch.get_num_threads()
    ask = (torch.get_num_threads, (), {})
    assert side_by_side([ask, ask], workers=2) == [1, 1]
    assert side_by_side([ask], workers=1) == [1]  # in this process, then restored
    assert side_by_side([ask], workers=1, threads=2) == [2]
    assert torch.get_num_threads() == before


def test_a_failing_call_raises_here_and_bad_counts_are_refused():
    with pytest.raises(ValueError, match="invalid literal"):
        side_by_side([(int, ("x",), {}), (int, ("1",), {})], workers=2)
    with pytest.raises(KilibError, match="workers=-1: use 0"):
        side_by_side([(int, ("1",), {})], workers=-1)
    with pytest.raises(KilibError, match="threads must be at least 1"):
        side_by_side([(int, ("1",), {})], threads=0)


def test_no_worker_outlives_a_killed_run(tmp_path):
    """A run killed with SIGKILL (no Python cleanup) while its workers are busy leaves no worker:
    each ends within seconds of its parent, instead of training on into the cache."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = (
        "import time\n"
        "from kilib.jobs import side_by_side\n"
        "side_by_side([(time.sleep, (120,), {}), (time.sleep, (120,), {})], workers=2)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script])
    workers: list = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [
                c for c in psutil.Process(run.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())
            ]
        assert len(workers) == 2, "the workers did not start"
        time.sleep(3)  # both busy in their sleep
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [w.pid for w in alive]
    finally:  # whatever happened, neither the run nor its workers are left running (this process's own helpers are)
        for proc in [run, *workers]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                proc.kill()
