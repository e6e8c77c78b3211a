"""The paper-profile stage benchmark runs end to end (on a CPU, at its small shape), so a GPU
session spends its device time measuring, not debugging. It asserts what was written, never
how fast."""

import json

from kilib import stage_bench
from kilib.runtime import results_root


def test_stage_bench_writes_every_stage_with_its_peak():
    assert stage_bench.main([]) == 0
    record = json.loads((results_root() / "bench" / "paper_stages_cpu.json").read_text())
    assert set(record["stages"]) == {"generate", "train", "judge"}
    train = record["stages"]["train"]
    assert train["steps"] == record["work"]["pairs"] * record["work"]["epochs"]  # batch size 1, as the paper
    assert record["stages"]["generate"]["new_tokens"] > 0
    assert all(stage["peak_rss_mib"] > 0 for stage in record["stages"].values())
