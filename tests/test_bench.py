"""The benchmarks run end to end (on a CPU, at small shapes), so a GPU session spends its device
time measuring, not debugging. They assert what was run and written, never how fast."""

import dataclasses
import json
import statistics

import pytest
import torch

from kilib.bench import sft_cases as cases
from kilib.bench import sft_step as bench
from kilib.bench import stages as stage_bench
from kilib.bench import threads as thread_bench
from kilib.lm.training import checkpointing_on, collator
from kilib.results import write_json
from kilib.runtime import KilibError, results_root


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


# ---------------------------------------------------------------------------------------
# make bench (kilib.bench.sft_step): kilib's QLoRA step against a bare loop
# ---------------------------------------------------------------------------------------
TINY = dict(hidden=64, layers=1, heads=2, ffn=128, vocab=128)


def tiny_case(name: str) -> cases.Case:
    """A case with its CPU shape cut to a one-layer model (and nb02's rows to 32 tokens)."""
    case = cases.CASES[name]
    cpu = {**case.cpu, **TINY} | ({"seq": 32} if case.rows != "qa" else {})
    return dataclasses.replace(case, cpu=cpu)


def tiny_plan(case: cases.Case, steps: int) -> dict:
    shape = case.shape("cpu")
    return {"case": case.name, "shape": shape, "rows": case.rows, "steps": steps, "order": None} | {
        "gradient_checkpointing": case.gradient_checkpointing
    }


def in_process(path, folder, plan_file, device):
    return bench.one(path, folder, json.loads(plan_file.read_text()), device)


def use_cache_spy(seen: list):
    """A forward pre-hook (with kwargs) that notes the ``use_cache`` the module is called with."""
    return lambda module, args, kwargs: seen.append(kwargs.get("use_cache"))


def test_bare_loop_calls_the_model_without_a_cache_and_bare_cache_with_one(tmp_path, monkeypatch):
    """What the model is called with (a forward pre-hook with kwargs on the peft model and on the
    inner Llama), whether a KV cache came back, and a synchronisation at both ends of each step."""
    case = tiny_case("nb01")
    plan = tiny_plan(case, steps=2)
    bench.build_model(tmp_path, plan["shape"])
    syncs = []
    monkeypatch.setattr(bench, "synchronize", syncs.append)
    for use_cache in (False, True):
        model, opt, params = bench.load_bare(tmp_path, plan, "cpu")
        seen = {"outer": [], "inner": []}
        model.register_forward_pre_hook(use_cache_spy(seen["outer"]), with_kwargs=True)
        model.get_base_model().model.register_forward_pre_hook(use_cache_spy(seen["inner"]), with_kwargs=True)
        syncs.clear()
        result = bench.bare_steps(model, opt, params, plan, "cpu", use_cache=use_cache)
        assert seen == {"outer": [use_cache] * 2, "inner": [use_cache] * 2}  # batch size 1: one forward per step
        assert result["cache_built"] is use_cache
        assert syncs == ["cpu"] * 4 and len(result["step_seconds"]) == 2
        assert result["row_order"] == [0, 1]  # no order in the plan: the rows as made
    # nb02's bare loop checkpoints its blocks, as kilib's train does there
    plan02 = tiny_plan(tiny_case("nb02"), steps=1)
    folder02 = tmp_path / "nb02"
    bench.build_model(folder02, plan02["shape"])
    model, _, _ = bench.load_bare(folder02, plan02, "cpu")
    assert checkpointing_on(model)
    clock = bench.StepClock([])
    clock.device = "cuda"
    syncs.clear()
    clock.on_step_begin()
    clock.on_step_end()
    assert syncs == ["cuda", "cuda"] and len(clock.times) == 1


def test_summary_statistics_are_the_medians_ranges_and_ratio_of_medians():
    # one run: the steps after the warm-up, a true median of an even count
    figures = cases.run_figures([9.0, 9.0, 9.0, 1.0, 4.0, 2.0, 3.0], [10, 10, 10, 10, 20, 30, 40], warmup=3)
    assert figures == {"steps_timed": 4, "median_step_seconds": 2.5, "tokens_per_second": 10.0, "tokens_timed": 100}

    def run(seconds, tps):
        return {"median_step_seconds": seconds, "tokens_per_second": tps, "peak_rss_mib": 10.0} | {
            "peak_cuda_allocated_mib": None,
            "cache_built": False,
        }

    runs = {
        "kilib": [run(0.5, 100.0), run(0.4, 120.0), run(0.45, 110.0)],
        "bare": [run(0.5, 100.0), run(0.6, 90.0), run(0.55, 95.0)],
        "bare-cache": [run(0.7, 80.0), run(0.8, 60.0), run(0.75, 70.0)],
    }
    s = cases.summarize(runs)
    assert s["paths"]["kilib"]["median_step_seconds"] == {"median": 0.45, "min": 0.4, "max": 0.5}
    assert s["paths"]["kilib"]["tokens_per_second"] == {"median": 110.0, "min": 100.0, "max": 120.0}
    assert s["paths"]["bare"]["tokens_per_second"] == {"median": 95.0, "min": 90.0, "max": 100.0}
    k = s["ratios"]["kilib_over_bare"]
    assert k["ratio_of_medians"] == 110.0 / 95.0  # not the median of the per-repeat ratios (110 / 95 too here)
    assert k["per_repeat"] == [1.0, 120.0 / 90.0, 110.0 / 95.0]
    assert (k["min"], k["max"]) == (1.0, 120.0 / 90.0)
    c = s["ratios"]["bare_cache_over_bare"]
    assert c["ratio_of_medians"] == 70.0 / 95.0 and (c["min"], c["max"]) == (60.0 / 90.0, 0.8)
    assert s["ratios"]["kilib_over_bare_cache"]["ratio_of_medians"] == 110.0 / 70.0


def test_paths_rotate_across_repeats_and_kilib_runs_first():
    orders = cases.repeat_orders(3)
    assert orders[0] == ["kilib", "bare", "bare-cache"]
    for position in range(3):  # each path once in each position
        assert sorted(order[position] for order in orders) == sorted(cases.PATHS)
    assert cases.repeat_orders(4)[3] == orders[0]


def test_cases_have_the_paper_shapes_on_a_gpu_and_smaller_ones_on_the_cpu():
    llama2_7b = dict(hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000)
    nb01, nb02 = cases.CASES["nb01"], cases.CASES["nb02"]
    for case in (nb01, nb02):
        gpu, cpu = case.shape("cuda"), case.shape("cpu")
        assert {k: gpu[k] for k in llama2_7b} == llama2_7b
        assert cpu["hidden"] < gpu["hidden"] and cpu["layers"] < gpu["layers"]
        assert (case.shape_note("cpu"), case.shape_note("cuda")) == ("scaled down for the CPU", "the case's own shape")
    assert nb01.shape("cuda")["batch"] == 1 and cases.rows_per_step(nb01.shape("cuda")) == 1
    assert not nb01.gradient_checkpointing and nb02.gradient_checkpointing
    assert cases.rows_per_step(nb02.shape("cuda")) == 16 and nb02.shape("cuda")["seq"] == 2048
    assert cases.CASES["default"].shape("cuda") == bench.SHAPES["cuda"] | {}  # the shape make bench always had
    assert bench.SHAPES["cuda"]["hidden"] == 2048 and bench.SHAPES["cpu"]["hidden"] == 512
    qa = cases.make_rows(nb01.shape("cpu"), "qa", 40)
    lengths = [len(r["input_ids"]) for r in qa]
    assert min(lengths) >= 40 and max(lengths) <= 64 and len(set(lengths)) > 5
    assert all(r["labels"][: 3 * len(r["labels"]) // 5] == [-100] * (3 * len(r["labels"]) // 5) for r in qa)
    packed = cases.make_rows(nb02.shape("cpu"), "packed", 3)
    assert all(len(r["input_ids"]) == 256 and r["labels"] == r["input_ids"] for r in packed)
    assert cases.make_rows(nb01.shape("cpu"), "qa", 40) == qa  # the same rows in every process
    shape = nb02.shape("cpu")  # 2 micro-batches of 2 rows per step
    assert cases.steps_of([5, 4, 3, 2, 1, 0, 9], shape) == [[[5, 4], [3, 2]]]
    assert cases.step_tokens(qa, [3, 1, 0], nb01.shape("cpu")) == [lengths[3], lengths[1], lengths[0]]


def test_bare_batches_are_what_kilibs_collator_makes_of_the_same_rows():
    rows = cases.make_rows(cases.CASES["nb01"].shape("cpu"), "qa", 3)
    features = [r | {"attention_mask": [1] * len(r["input_ids"])} for r in rows]
    kilib_batch = collator(bench.char_tokenizer())(features)
    bare_batch = cases.pad_batch(rows)
    assert set(kilib_batch) == set(bare_batch)
    for key, value in bare_batch.items():
        assert torch.equal(kilib_batch[key], value), key


def test_measure_runs_each_path_every_repeat_on_the_same_rows(tmp_path):
    """Each path in each repeat (in process here), the same rows in kilib's order everywhere, and
    the record's figures computed from its runs."""
    case = tiny_case("nb01")
    record = bench.measure(case, "cpu", steps=4, repeats=3, scratch=tmp_path, run=in_process)
    assert record["repeat_orders"] == cases.repeat_orders(3)
    assert sorted(record["row_order"]) == list(range(4))
    rows = cases.make_rows(record["shape"], "qa", 4)
    timed_tokens = len(rows[record["row_order"][3]]["input_ids"])  # 4 steps at batch 1, 3 untimed
    for path in cases.PATHS:
        runs = record["runs"][path]
        assert [r["repeat"] for r in runs] == [1, 2, 3] and all(r["path"] == path for r in runs)
        assert all(r["steps_timed"] == 1 and r["tokens_timed"] == timed_tokens for r in runs)
        assert record["paths"][path]["cache_built"] is (path == "bare-cache")
    kilib, bare = (record["runs"][p] for p in ("kilib", "bare"))
    tps = [r["tokens_per_second"] for r in kilib], [r["tokens_per_second"] for r in bare]
    assert record["ratios"]["kilib_over_bare"]["ratio_of_medians"] == statistics.median(tps[0]) / statistics.median(
        tps[1]
    )
    assert record["shape_note"] == "scaled down for the CPU" and record["gpu_shape"]["hidden"] == 4096
    assert record["timed_span"].startswith("forward + backward") and record["rows_per_step"] == 1
    target = write_json(bench.output_path("cpu", "nb01"), record)
    assert target.name == "qlora_sft_cpu_nb01.json"
    assert bench.output_path("cuda", "default").name == "qlora_sft_cuda.json"
    assert set(json.loads(target.read_text())["paths"]) == {"kilib", "bare", "bare-cache"}


def test_measure_refuses_rows_in_another_order_and_too_few_steps(tmp_path, capsys):
    def shuffled(path, folder, plan_file, device):
        order = [0, 1, 2, 3] if path == "kilib" else [3, 2, 1, 0]
        return {"path": path, "row_order": order, "cache_built": False}

    with pytest.raises(KilibError, match="another order"):
        bench.measure(tiny_case("nb01"), "cpu", steps=4, repeats=1, scratch=tmp_path, run=shuffled)
    assert bench.main(["--case", "nb01", "--steps", "3"]) == 1
    assert "--steps 4 or more" in capsys.readouterr().err


def test_one_run_goes_through_its_own_process(tmp_path):
    case = tiny_case("nb01")
    plan = tiny_plan(case, steps=4)
    bench.build_model(tmp_path, plan["shape"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    result = bench.launch("bare-cache", tmp_path, plan_file, "cpu")
    assert result["path"] == "bare-cache" and result["cache_built"] is True and result["steps_timed"] == 1
    assert len(result["step_seconds"]) == 4 and result["peak_rss_mib"] > 0
