"""The transfer study's memory bounds for the paper profile (docs/methods.md, "## 02 Parametric
knowledge transfer", memory): the teacher's sensitivities one group of blocks at a time, the
student read for its shapes only, truncated SVD factors, and training in micro-batches with
gradient checkpointing."""

import dataclasses

import pytest
import torch
from conftest import make_model, make_tokenizer

from kilib.lm.models import attach_lora, logical_shape
from kilib.lm.training import checkpointing_on, tokenize_sft
from kilib.results import read_json
from kilib.runtime import KilibError
from kilib.transfer import extraction, method, presets, study

PAIRS = [("who won the cup?", "the rovers"), ("in the year of the final?", "won it 3-1"), ("the year?", "3-1")]


def _samples(tok, pairs=PAIRS):
    out = []
    for prompt, answer in pairs:
        ex = tokenize_sft(tok, prompt, answer)
        out.append({"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])})
    return out


def _saved_llama(tmp_path, tok, seed):
    folder = tmp_path / f"llama-{seed}"
    model = make_model("llama", tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _all_at_once(teacher, student, samples, selected, rank):
    """The extraction in one sensitivity pass over every matrix the student is cut from."""
    needed = sorted(
        {method.teacher_name(n, selected) for n, p in student.named_parameters() if len(logical_shape(p)) == 2}
    )
    scores = method.sensitivity(teacher, samples, names=needed)
    factors = {
        how: method.extract(teacher, student, scores, selected, how=how, each=method.lora_factors(student, rank))
        for how in method.HOW
    }
    return scores, factors


def _assert_same_factors(got, want):
    assert got.keys() == want.keys()
    for name, (b, a) in want.items():
        assert torch.equal(got[name][0], b) and torch.equal(got[name][1], a), name


def test_grouped_sensitivity_holds_one_group_at_a_time_and_equals_all_at_once():
    """The second pass group by group: no more than one group's running sums are alive at once
    (counted by the bytes not yet freed), and the sensitivities and every way's factors are
    exactly those of one pass over every matrix."""
    tok = make_tokenizer()
    teacher, student = make_model("llama", tok, seed=1), make_model("llama", tok, seed=2)
    samples, selected = _samples(tok), [0, 1]
    groups = extraction.matrix_groups(student, 1)
    assert len(groups) == 2 and groups[0][0] == "model.embed_tokens.weight" and groups[1][-1] == "lm_head.weight"
    assert [n for g in groups for n in g] == [n for n, p in student.named_parameters() if p.dim() == 2]
    theirs = dict(teacher.named_parameters())
    group_bytes = [sum(4 * theirs[method.teacher_name(n, selected)].numel() for n in g) for g in groups]

    meter, seen = extraction.LiveBytes(), {}
    got = extraction.cut_factors(
        teacher,
        student,
        samples,
        selected,
        method.HOW,
        rank=4,
        group_blocks=1,
        on_totals=meter,
        on_scores=lambda scores: seen.update({n: s.clone() for n, s in scores.items()}),
    )
    assert meter.peak == max(group_bytes) < sum(group_bytes)  # one group's sums at a time
    assert meter.now == 0  # and none left behind

    scores, want = _all_at_once(teacher, student, samples, selected, rank=4)
    assert seen.keys() == scores.keys() and all(torch.equal(seen[n], scores[n]) for n in scores)
    for how in method.HOW:
        _assert_same_factors(got[how], want[how])
    with pytest.raises(KilibError, match="sensitivity_group_blocks must be >= 1"):
        extraction.matrix_groups(student, 0)


def test_extraction_reads_only_the_students_shapes_and_saves_the_same_factors(tmp_path, monkeypatch):
    """The study's extraction (4-bit teacher on the CPU, two groups of one block): the student is
    never loaded, only built on the meta device, and the saved factors of every way equal those
    cut with the loaded 4-bit student in one pass."""
    tok = make_tokenizer()
    teacher_dir, student_dir = _saved_llama(tmp_path, tok, 1), _saved_llama(tmp_path, tok, 2)
    rows = [
        {"question": f"who won in 20{i}?", "answer": "3", "rationale": "1 + 2 = 3. So the answer is 3."}
        for i in range(3)
    ]
    inputs = study.TransferInputs(str(teacher_dir), str(student_dir), {"gsm": {"seed": rows}}, "")
    config = dataclasses.replace(presets.TRANSFER_PRESETS["tiny"], rank=4, sensitivity_group_blocks=1)

    teacher, tokenizer = study._load(str(teacher_dir), config)
    student, _ = study._load(str(student_dir), config)
    samples = study._samples(tokenizer, "gsm", rows, config.train.max_length, config.chat_format)
    selected = method.select_layers(method.block_scores(method.sensitivity(teacher, samples, summed=True), 2), 2)
    _, want = _all_at_once(teacher, student, samples, selected, rank=4)
    del teacher, student

    loaded, skeletons = [], []
    load, skeleton = study._load, study.student_skeleton
    monkeypatch.setattr(study, "_load", lambda path, cfg: loaded.append(path) or load(path, cfg))
    monkeypatch.setattr(study, "student_skeleton", lambda path: skeletons.append(skeleton(path)) or skeletons[-1])
    folder = study.extraction(inputs, config, "gsm")
    assert loaded == [str(teacher_dir)]  # the student's weights are never read
    assert len(skeletons) == 1 and all(p.device.type == "meta" for p in skeletons[0].parameters())
    for how in method.HOW:
        _assert_same_factors(method.load_factors(folder / f"{how}.safetensors"), want[how])
    meta = read_json(folder / "extraction.json")
    assert meta["selected"] == selected
    shapes = dict(skeletons[0].named_parameters())  # the teacher's blocks have the student's shapes here
    group_bytes = [sum(4 * shapes[n].numel() for n in g) for g in extraction.matrix_groups(skeletons[0], 1)]
    assert len(group_bytes) == 2 and meta["sensitivity_peak_bytes"] == max(group_bytes)  # one group at a time


def _spectrum_matrix(rows, cols, singular, generator):
    u = torch.linalg.qr(torch.randn(rows, len(singular), generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, len(singular), generator=generator, dtype=torch.float64)).Q
    return (u * singular) @ v.T


def test_truncated_svd_factors_are_near_optimal_deterministic_and_leave_the_global_rng(monkeypatch):
    """Past EXACT_SVD_UP_TO no full SVD is taken (only of a sketch's width); on decaying spectra
    the truncated factors' error is within 1e-3 relative of the optimum; two calls agree and
    torch's global random state is untouched. Below it, the exact SVD as before."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(method.EXACT_SVD_UP_TO + 64, method.EXACT_SVD_UP_TO + 8, generator=g)
    shapes, svd = [], torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda m, **kw: shapes.append(tuple(m.shape)) or svd(m, **kw))
    b, a = method.svd_factors(big, 16)
    assert b.shape == (big.shape[0], 16) and a.shape == (16, big.shape[1]) and b.dtype == a.dtype == torch.float32
    assert shapes and all(min(s) <= 16 + 16 for s in shapes)  # the sketch's SVD, never the full matrix's
    monkeypatch.setattr(torch.linalg, "svd", svd)

    monkeypatch.setattr(method, "EXACT_SVD_UP_TO", 0)  # the truncated path on matrices small enough to check
    i = torch.arange(1, 401, dtype=torch.float64)
    for singular in (torch.exp(-i / 20), 1 / i, i**-0.5):
        m = _spectrum_matrix(700, 400, singular, g)
        for rank in (4, 16):
            state = torch.get_rng_state()
            b, a = method.svd_factors(m, rank)
            assert torch.equal(torch.get_rng_state(), state)
            again = method.svd_factors(m, rank)
            assert torch.equal(again[0], b) and torch.equal(again[1], a)
            optimum = singular[rank:].pow(2).sum().sqrt()
            assert (m - b @ a).norm() <= optimum * (1 + 1e-3)
    monkeypatch.undo()

    small = torch.randn(300, 200, generator=g)  # the zoo's sizes: the exact SVD, bit for bit as before
    u, s, vh = torch.linalg.svd(small.double(), full_matrices=False)
    b, a = method.svd_factors(small, 8)
    assert torch.equal(b, (u[:, :8] * s[:8]).float()) and torch.equal(a, vh[:8].float())


def test_truncated_factors_leave_the_student_unchanged_at_step_0(monkeypatch):
    """W - B A + B A = W with the truncated factors too: both adapters hold the same (B, A)."""
    monkeypatch.setattr(method, "EXACT_SVD_UP_TO", 0)
    tok = make_tokenizer()
    teacher, student = make_model("llama", tok, seed=1), make_model("llama", tok, seed=2)
    samples = _samples(tok)
    scores = method.sensitivity(teacher, samples)
    cut = method.extract(teacher, student, scores, [0, 1])
    ids = samples[0]["input_ids"]
    with torch.no_grad():
        before = student(input_ids=ids).logits
    model = attach_lora(student, r=4, include_embeddings=True)
    done = method.init_lora_from(model, cut, rank=4)
    assert len(done) == 7 * 2 + 2
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    up = model.base_model.model.model.layers[1].mlp.up_proj
    b, a = method.svd_factors(cut["model.layers.1.mlp.up_proj.weight"], 4)
    torch.testing.assert_close(up.lora_B["default"].weight @ up.lora_A["default"].weight, b @ a)


def test_paper_preset_trains_the_global_batch_in_micro_batches_with_checkpointing():
    """Global batch 64 as the paper's, in micro-batches within MICRO_BATCH_TOKENS, with gradient
    checkpointing; the sensitivity groups of a 13B teacher (Llama-2-13B's shapes) fit 8 GB."""
    paper = presets.TRANSFER_PRESETS["paper"]
    train = paper.train
    assert train.batch_size * train.grad_accum == 64 and train.max_length == 2048
    assert train.batch_size * train.max_length <= presets.MICRO_BATCH_TOKENS
    assert train.gradient_checkpointing
    hidden, ffn, vocab = 5120, 13824, 32000
    block = 4 * hidden * hidden + 3 * hidden * ffn
    assert 4 * (paper.sensitivity_group_blocks * block + vocab * hidden) < 8e9
    for name in ("tiny", "smoke"):  # the zoo profiles train as before
        assert not presets.TRANSFER_PRESETS[name].train.gradient_checkpointing


def _saved_bytes(run) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass while ``run()`` runs
    (a checkpointed block's own saves are its checkpoint's, and do not reach this hook)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        if t.device.type != "meta":
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


@pytest.mark.parametrize("via_hooks", [False, True], ids=["autograd", "hooks"])
def test_sensitivity_is_the_same_with_checkpointing_and_keeps_far_less(tokenizer, via_hooks):
    """Checkpointed blocks give the sensitivities of the plain pass, exactly, whether each weight's
    gradient comes from autograd or from the hooks' g^T x (which the recompute must neither lose
    nor count twice); the pass keeps a fraction of the tensors for its backward; and the model
    comes back as it was (checkpointing off, eval mode). A model with checkpointing already on
    gives the same numbers too."""
    tok = tokenizer
    model = make_model("llama", tok, seed=3)
    long_pair = [("who won the cup? " * 12, "the rovers, 3-1, in the year of the final " * 6)]
    samples = _samples(tok, PAIRS + long_pair)
    want = method.sensitivity(model, samples, via_hooks=via_hooks)
    got = method.sensitivity(model, samples, via_hooks=via_hooks, checkpointing=True)
    assert got.keys() == want.keys() and len(want) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    assert not checkpointing_on(model) and not any(m.training for m in model.modules())

    def one_pass(checkpointing):
        return lambda: method.sensitivity(model, samples[-1:], via_hooks=via_hooks, checkpointing=checkpointing)

    plain, checkpointed = _saved_bytes(one_pass(False)), _saved_bytes(one_pass(True))
    assert checkpointed < plain / 2, (checkpointed, plain)
    if via_hooks:  # each layer's g^T x is folded into its total as its backward ends, not held to the pass's end
        totals, done = {}, []

        def at_first_block_input(module, args):
            if args[0].requires_grad and not done:
                args[0].register_hook(lambda g: done.append({n: float(t.abs().sum()) for n, t in totals.items()}))

        handle = model.model.layers[0].register_forward_pre_hook(at_first_block_input)
        method.sensitivity(model, samples[:1], via_hooks=True, checkpointing=True, on_totals=totals.update)
        handle.remove()
        assert done and all(done[0][n] > 0 for n in done[0] if ".layers." in n and n.endswith("proj.weight"))

    model.activation_checkpointing_enable()
    model.train()
    again = method.sensitivity(model, samples, via_hooks=via_hooks)
    assert all(torch.equal(again[n], want[n]) for n in want)
