"""The paper-profile stage benchmark runs end to end (on a CPU, at its small shape), so a GPU
session spends its device time measuring, not debugging. It asserts what was written, never
how fast."""

import json

from kilib.bench import sft_step as bench
from kilib.bench import stages as stage_bench
from kilib.bench import threads as thread_bench
from kilib.runtime import results_root


def test_stage_bench_writes_every_stage_with_its_peak():
    assert stage_bench.main([]) == 0
    record = json.loads((results_root() / "bench" / "paper_stages_cpu.json").read_text())
    assert set(record["stages"]) == {"generate", "train", "judge"}
    train = record["stages"]["train"]
    assert train["steps"] == record["work"]["pairs"] * record["work"]["epochs"]  # batch size 1, as the paper
    assert record["stages"]["generate"]["new_tokens"] > 0
    assert all(stage["peak_rss_mib"] > 0 for stage in record["stages"].values())


def test_thread_bench_runs_each_kind_at_the_thread_counts_it_reports(tmp_path):
    """The side-by-side measurement goes through kilib.jobs.side_by_side: each run alone at the
    thread count it names, each of the side-by-side runs at one thread, and the figures are
    the tokens over the seconds they were timed."""
    shape = dict(hidden=64, layers=1, heads=2, ffn=128, vocab=128, seq=32, batch=2, new=2)
    bench.build_model(tmp_path, shape)
    r = thread_bench.measure("qlora", tmp_path, steps=1, cores=2, shape=shape)
    assert r["threads_seen"] == {"alone": [1, 2], "side_by_side": [1, 1]}
    assert r["speedup_all_cores_over_1"] == (
        r["alone"]["2"]["tokens_per_second"] / r["alone"]["1"]["tokens_per_second"]
    )
    tokens = 2 * shape["batch"] * shape["seq"]  # two runs, one timed step each
    assert abs(r["side_by_side"]["tokens_per_second"] * r["side_by_side"]["window_seconds"] - tokens) < 1e-6 * tokens
    for kind in ("pretrain", "generate"):  # the other kinds' steps, alone (no processes to start)
        r = thread_bench.measure(kind, tmp_path, steps=1, cores=1, shape=shape)
        assert r["threads_seen"] == {"alone": [1]} and "side_by_side" not in r and r["speedup_all_cores_over_1"] == 1
