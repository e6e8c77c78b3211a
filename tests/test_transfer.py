"""Knowledge transfer's mathematics against direct computations, its tasks and its study
(docs/methods.md, "## 02 Parametric knowledge transfer")."""

import pytest
import torch
from conftest import make_model, make_tokenizer

from kilib.lm.training import render_answer, render_prompt, tokenize_sft
from kilib.runtime import KilibError
from kilib.transfer import method, presets, study, tasks


def _samples(tok, pairs):
    out = []
    for prompt, answer in pairs:
        ex = tokenize_sft(tok, prompt, answer)
        out.append({"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])})
    return out


def test_sensitivity_is_the_per_sample_absolute_first_order_term_summed():
    """S = sum_j |theta * dL_j/dtheta|: the gradient checked by central finite differences of the
    answer-only loss (a float64 model), the absolute value taken per sample, not of the summed gradient."""
    tok = make_tokenizer()
    model = make_model("llama", tok).double()
    samples = _samples(tok, [("who won the cup?", "the rovers"), ("in the year of the final?", "won it 3-1")])
    name = "model.layers.0.self_attn.q_proj.weight"
    s = method.sensitivity(model, samples, names=[name])[name]
    p = dict(model.named_parameters())[name]

    def loss(sample):  # the answer-only mean cross-entropy, computed here in float64
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=sample["input_ids"]).logits[0, :-1], -1)
        targets = sample["labels"][0, 1:]
        keep = targets != -100
        return -logp[keep.nonzero()[:, 0], targets[keep]].mean().item()

    # Llama's RMSNorm computes in float32, so smaller steps drown in rounding; central differences err by O(eps^2)
    eps = 1e-2
    for i, j in [(0, 0), (5, 17), (63, 63)]:
        direct = 0.0
        for sample in samples:
            keep = p.data[i, j].item()
            p.data[i, j] = keep + eps
            up = loss(sample)
            p.data[i, j] = keep - eps
            down = loss(sample)
            p.data[i, j] = keep
            direct += abs(keep * (up - down) / (2 * eps))
        assert s[i, j].item() == pytest.approx(direct, rel=5e-3, abs=1e-9)
    # per sample, then summed: two samples give the sum of their own sensitivities ...
    one, two = (method.sensitivity(model, [x], names=[name])[name] for x in samples)
    assert torch.allclose(s, one + two)
    # ... which is not |theta * (g1 + g2)| wherever the two gradients disagree in sign
    model.zero_grad()
    for x in samples:
        model(input_ids=x["input_ids"], labels=x["labels"]).loss.backward()
    summed_first = (p.detach() * p.grad).abs().float()
    assert (s > summed_first + 1e-9).any()
    assert p.grad is not None and all(q.requires_grad for q in model.parameters())


def test_sensitivity_rejects_batches_and_unknown_names():
    tok = make_tokenizer()
    model = make_model("llama", tok)
    samples = _samples(tok, [("who won?", "the rovers")])
    batch = {k: v.repeat(2, 1) for k, v in samples[0].items()}
    with pytest.raises(KilibError, match="one sample per batch"):
        method.sensitivity(model, [batch])
    with pytest.raises(KilibError, match="no parameter named nope"):
        method.sensitivity(model, samples, names=["nope"])
    with pytest.raises(KilibError, match="at least one seed sample"):
        method.sensitivity(model, [])


def test_layer_selection_keeps_the_top_blocks_in_their_order():
    assert method.select_layers([0.1, 5.0, 0.3, 4.0, 2.0], 3) == [1, 3, 4]
    assert method.select_layers([1.0, 2.0, 2.0, 1.0], 2) == [1, 2]
    assert method.select_layers([3.0, 3.0, 3.0], 2) == [0, 1]  # ties go to the earlier block
    with pytest.raises(KilibError, match="teacher needs at least as many blocks"):
        method.select_layers([1.0, 2.0], 3)
    scores = {
        "model.layers.0.mlp.up_proj.weight": torch.ones(2, 2),
        "model.layers.1.input_layernorm.weight": torch.ones(3),
        "model.layers.1.self_attn.q_proj.weight": torch.full((2,), 2.0),
        "model.embed_tokens.weight": torch.ones(9),
    }
    assert method.block_scores(scores, 2) == [4.0, 7.0]  # layer norms count; the embeddings belong to no block


def test_best_submatrix_matches_the_authors_double_loop():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        h, w = torch.randint(1, 9, (2,), generator=g).tolist()
        rows, cols = (
            torch.randint(1, h + 1, (1,), generator=g).item(),
            torch.randint(1, w + 1, (1,), generator=g).item(),
        )
        scores = torch.randint(0, 3, (h, w), generator=g).float()  # small integers: many ties
        best, corner = None, None
        for r in range(h - rows + 1):  # the double loop, first maximum kept
            for c in range(w - cols + 1):
                total = scores[r : r + rows, c : c + cols].sum().item()
                if best is None or total > best:
                    best, corner = total, (r, c)
        assert method.best_submatrix(scores, rows, cols) == corner, (trial, scores, rows, cols)
    with pytest.raises(KilibError, match="does not fit"):
        method.best_submatrix(torch.zeros(3, 3), 4, 1)
    # a numpy array is taken as its tensor; what is not a 2-D array of numbers is one line
    scores = torch.rand(5, 7, generator=g)
    assert method.best_submatrix(scores.numpy(), 2, 3) == method.best_submatrix(scores, 2, 3)
    with pytest.raises(KilibError, match="must be a 2-D array of numbers, got str"):
        method.best_submatrix("scores", 1, 1)
    with pytest.raises(KilibError, match=r"must be 2-D .*got shape \(5,\)"):
        method.best_submatrix(torch.ones(5), 1, 1)


def test_a_transferred_start_refuses_lora_dropout():
    """With dropout the trained adapter and the frozen -B A one draw different masks in training,
    so the student would not be unchanged at step 0: refused in one line, before any change."""
    from kilib.lm.models import attach_lora

    tok = make_tokenizer()
    model = attach_lora(make_model("llama", tok), r=4, dropout=0.1, target_modules=["q_proj"])
    extracted = {"model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64)}
    with pytest.raises(KilibError, match="dropout 0.1, which breaks the start's equality.*lora_dropout=0"):
        method.init_lora_from(model, extracted, rank=4)
    assert method.RESIDUAL not in model.peft_config


def test_svd_factors_start_a_lora_that_leaves_the_student_unchanged():
    """W - B A frozen, LoRA at (B, A) with scale 1: at step 0 the model is the student exactly."""
    from kilib.lm.models import attach_lora

    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 8, generator=g, dtype=torch.float64)
    b, a = method.svd_factors(m, 8)
    assert torch.allclose(b @ a, m)  # full rank: exact
    b, a = method.svd_factors(m, 3)
    u, s, vh = torch.linalg.svd(m)
    assert torch.allclose(b @ a, (u[:, :3] * s[:3]) @ vh[:3])  # the best rank-3 approximation
    with pytest.raises(KilibError, match="rank 9 is out of range"):
        method.svd_factors(m, 9)

    tok = make_tokenizer()
    student = make_model("llama", tok)
    ids = torch.tensor([tok("who won the cup in the year of the final?").input_ids])
    with torch.no_grad():
        before = student(input_ids=ids).logits
    model = attach_lora(student, r=4, target_modules=["q_proj"])
    lora = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(lora) == 2 and all(m.scaling["default"] == 1.0 for m in lora)
    for module in lora:
        w = module.base_layer.weight
        extracted = torch.randn(w.shape, generator=g)  # stands for the teacher's submatrix
        b, a = method.svd_factors(extracted, 4)
        with torch.no_grad():
            module.lora_B["default"].weight.copy_(b)
            module.lora_A["default"].weight.copy_(a)
            w -= b @ a
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    with torch.no_grad():  # and the LoRA does carry the extracted matrix: without it the model differs
        lora[0].lora_B["default"].weight.zero_()
        assert not torch.allclose(before, model(input_ids=ids).logits, atol=1e-3)


def test_extract_matrix_ways():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    s = torch.rand(6, 5, generator=g)
    r0, c0 = method.best_submatrix(s, 3, 2)
    assert torch.equal(method.extract_matrix(w, s, (3, 2)), w[r0 : r0 + 3, c0 : c0 + 2])
    # the vocabulary rows stay whole (the student's, in order); only hidden columns are chosen
    vocab = method.extract_matrix(w, s, (4, 2), vocab_rows=True)
    c0 = method.best_submatrix(s[:4], 4, 2)[1]
    assert torch.equal(vocab, w[:4, c0 : c0 + 2])
    top = method.extract_matrix(w, s, (2, 3), how="top")
    rows, cols = sorted(torch.topk(s.sum(1), 2).indices.tolist()), sorted(torch.topk(s.sum(0), 3).indices.tolist())
    assert torch.equal(top, w[rows][:, cols])
    # the random control: a window of the right shape, the same for the same seed
    draws = [
        method.extract_matrix(w, s, (3, 2), how="random", generator=torch.Generator().manual_seed(k)) for k in (1, 1, 2)
    ]
    assert all(d.shape == (3, 2) for d in draws) and torch.equal(draws[0], draws[1])
    assert any((w.unfold(0, 3, 1).unfold(1, 2, 1) == draws[2]).flatten(2).all(-1).flatten())  # a contiguous window of w
    with pytest.raises(KilibError, match="unknown extraction 'best'"):
        method.extract_matrix(w, s, (3, 2), how="best")
    with pytest.raises(KilibError, match="vocabulary .* is larger than the teacher's"):
        method.extract_matrix(w, s, (7, 2), vocab_rows=True)
    assert method.teacher_name("model.layers.1.mlp.up_proj.weight", [0, 3]) == "model.layers.3.mlp.up_proj.weight"
    assert method.teacher_name("lm_head.weight", [0, 3]) == "lm_head.weight"


def test_zoo_teacher_to_student_end_to_end():
    """llama-m (teacher) to llama-s (student) of the smoke zoo: sensitivity on seed Q&A, the top
    blocks, every student matrix cut to the student's shape, and a LoRA that starts there while
    the student's outputs stay what they were."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kilib.lm.data import qa_prompt
    from kilib.lm.models import attach_lora, check_same_tokenizer
    from kilib.tiny import zoo

    smoke = zoo.zoo_config("smoke")
    world = zoo.world_of(smoke)
    teacher = AutoModelForCausalLM.from_pretrained(zoo.model_dir(smoke, "llama-m"))
    student = AutoModelForCausalLM.from_pretrained(zoo.model_dir(smoke, "llama-s"))
    tok = AutoTokenizer.from_pretrained(zoo.model_dir(smoke, "llama-s"))
    check_same_tokenizer(tok, AutoTokenizer.from_pretrained(zoo.model_dir(smoke, "llama-m")))
    facts = [f for f in world.facts.values() if f.period == "pre"][:4]
    samples = _samples(tok, [(qa_prompt(world.questions(f.id, "train")[0]), f.object) for f in facts])
    scores = method.sensitivity(teacher, samples)
    n_teacher, n_student = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    selected = method.select_layers(method.block_scores(scores, n_teacher), n_student)
    assert len(selected) == n_student < n_teacher
    shapes = {n: p.shape for n, p in student.named_parameters() if p.dim() == 2}
    for how in method.HOW:
        cut = method.extract(teacher, student, scores, selected, how=how)
        assert {n: m.shape for n, m in cut.items()} == shapes
    cut = method.extract(teacher, student, scores, selected)
    ids = samples[0]["input_ids"]
    with torch.no_grad():
        before = student(input_ids=ids).logits
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    with pytest.raises(KilibError, match="has rank 4, not 8: attach it with r=8"):
        method.init_lora_from(
            attach_lora(
                AutoModelForCausalLM.from_pretrained(zoo.model_dir(smoke, "llama-s")), r=4, target_modules=targets
            ),
            cut,
            rank=8,
        )
    model = attach_lora(student, r=8, alpha=16, target_modules=targets)
    done = method.init_lora_from(model, cut, rank=8)
    assert len(done) == 7 * n_student + 1 and "lm_head.weight" in done
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)
    with pytest.raises(KilibError, match="already started"):
        method.init_lora_from(model, cut, rank=8)


def _saved_llama(tmp_path, tok, seed=0):
    folder = tmp_path / f"llama-{seed}"
    model = make_model("llama", tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_sensitivity_from_hooks_equals_autograd():
    """g^T x from the hooks is the weight gradient autograd computes: the same sensitivity."""
    tok = make_tokenizer()
    model = make_model("llama", tok)
    samples = _samples(tok, [("who won the cup?", "the rovers"), ("in the year of the final?", "won it 3-1")])
    direct = method.sensitivity(model, samples)
    hooked = method.sensitivity(model, samples, via_hooks=True)
    assert direct.keys() == hooked.keys()
    for name in direct:
        torch.testing.assert_close(hooked[name], direct[name], rtol=1e-4, atol=1e-9)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def test_summed_sensitivity_is_each_parameters_total():
    """Layer selection's pass keeps one number per parameter: the total of the full sensitivity."""
    tok = make_tokenizer()
    model = make_model("llama", tok)
    samples = _samples(tok, [("who won the cup?", "the rovers"), ("the year?", "3-1")])
    full, summed = method.sensitivity(model, samples), method.sensitivity(model, samples, summed=True)
    assert full.keys() == summed.keys() and all(summed[n].dim() == 0 for n in summed)
    for name in full:
        torch.testing.assert_close(summed[name], full[name].sum(), rtol=1e-5, atol=1e-9)
    assert method.block_scores(summed, 2) == pytest.approx(method.block_scores(full, 2), rel=1e-5)


def test_4bit_teacher_sensitivity_matches_its_dequantised_copy(tmp_path):
    """A 4-bit teacher (no trainable weights) gives the sensitivity of the full-precision model
    holding its dequantised weights, computed by plain autograd."""
    from kilib.lm.models import dense_weight, is_4bit_param, load_causal_lm

    tok = make_tokenizer()
    teacher, _ = load_causal_lm(_saved_llama(tmp_path, tok), quantization="4bit", device="cpu")
    copy = make_model("llama", tok)
    quantized = {n: p for n, p in teacher.named_parameters()}
    with torch.no_grad():
        for n, p in copy.named_parameters():
            p.copy_(dense_weight(quantized[n]))
    assert is_4bit_param(quantized["model.layers.0.mlp.up_proj.weight"])
    samples = _samples(tok, [("who won the cup?", "the rovers"), ("the year?", "3-1")])
    got, want = method.sensitivity(teacher, samples), method.sensitivity(copy, samples)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=2e-3, atol=1e-7)


def test_4bit_student_lora_starts_at_the_teacher_factors_unchanged(tmp_path):
    """A 4-bit student with LoRA on every linear layer, the embeddings and the output head,
    started from a teacher's extracted matrices: its logits at step 0 are the student's, the
    trainable adapter holds the extracted factors, the -B A adapter is frozen, and a step of
    training moves the model."""
    from kilib.lm.models import attach_lora, load_causal_lm

    tok = make_tokenizer()
    teacher, _ = load_causal_lm(_saved_llama(tmp_path, tok, seed=1), quantization="4bit", device="cpu")
    student, _ = load_causal_lm(_saved_llama(tmp_path, tok, seed=2), quantization="4bit", device="cpu")
    samples = _samples(tok, [("who won the cup?", "the rovers")])
    scores = method.sensitivity(teacher, samples)
    selected = method.select_layers(method.block_scores(scores, 2), 2)
    cut = method.extract(teacher, student, scores, selected)
    assert cut["model.layers.0.mlp.up_proj.weight"].shape == (128, 64)  # the logical shape, not the packed bytes
    ids = samples[0]["input_ids"]
    with torch.no_grad():
        before = student(input_ids=ids).logits
    model = attach_lora(student, r=4, include_embeddings=True)
    done = method.init_lora_from(model, cut, rank=4)
    assert len(done) == 7 * 2 + 2 and {"model.embed_tokens.weight", "lm_head.weight"} <= set(done)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-4)
    up = model.base_model.model.model.layers[0].mlp.up_proj
    b, a = method.svd_factors(cut["model.layers.0.mlp.up_proj.weight"], 4)
    torch.testing.assert_close(up.lora_B["default"].weight @ up.lora_A["default"].weight, b @ a)
    emb = model.base_model.model.model.embed_tokens  # peft's embedding update is (B A)^T
    b, a = method.svd_factors(cut["model.embed_tokens.weight"].T, 4)
    torch.testing.assert_close(emb.lora_embedding_B["default"] @ emb.lora_embedding_A["default"], b @ a)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(method.RESIDUAL not in n and "lora" in n for n in trainable)
    assert any(method.RESIDUAL in n for n, _ in model.named_parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=ids, labels=samples[0]["labels"]).loss.backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, before, atol=1e-3)
    with pytest.raises(KilibError, match="already started"):
        method.init_lora_from(model, cut, rank=4)

    # what the extraction saves: only the factors, cut matrix by matrix; they start the same LoRA
    path = tmp_path / "factors.safetensors"
    fresh, _ = load_causal_lm(_saved_llama(tmp_path, tok, seed=2), quantization="4bit", device="cpu")
    method.save_factors(method.extract(teacher, fresh, scores, selected, each=method.lora_factors(fresh, 4)), path)
    factors = method.load_factors(path)
    assert set(factors) == set(cut) and factors["model.layers.0.mlp.up_proj.weight"][0].shape == (128, 4)
    again = attach_lora(fresh, r=4, include_embeddings=True)
    assert method.init_lora_from(again, factors, rank=4) == done
    frozen = {n: p for n, p in model.named_parameters() if method.RESIDUAL in n}  # the start's factors (B negated)
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in again.named_parameters() if method.RESIDUAL in n)
    embedding = again.base_model.model.model.embed_tokens
    b, a = method.svd_factors(cut["model.embed_tokens.weight"].T, 4)
    torch.testing.assert_close(embedding.lora_embedding_B["default"] @ embedding.lora_embedding_A["default"], b @ a)
    with pytest.raises(KilibError, match="have rank 4, not 2: extract them at rank 2"):
        method.init_lora_from(
            attach_lora(
                load_causal_lm(_saved_llama(tmp_path, tok, seed=2), quantization="4bit", device="cpu")[0],
                r=2,
                include_embeddings=True,
            ),
            factors,
            rank=2,
        )


def test_task_scoring_and_notebook_parameters():
    import dataclasses

    row = {"question": "q", "answer": "12", "rationale": "3 x 4 = 12. The answer is 12"}
    assert tasks.score("gsm", "3 x 4 = 12. The answer is 12.", row) == {"correct": 1.0}
    assert tasks.score("gsm", "The answer is 13", row) == {"correct": 0.0}
    mmlu = {"question": "Who?", "choices": ["a", "b", "c", "d"], "answer": "C"}
    assert tasks.score("mmlu", "C", mmlu) == {"correct": 1.0}
    assert tasks.score("mmlu", "Rovers", mmlu) == {"correct": 0.0}
    assert tasks.task_prompt("mmlu", mmlu).endswith("C. c\nD. d\nAnswer:")
    sni = {"instruction": "Name the winner.", "input": "x", "output": "the rovers won it"}
    # ROUGE-L F1 by hand: LCS("rovers won", "the rovers won it") = 2 words, P = 2/2, R = 2/4
    assert tasks.score("sni", "rovers won", sni) == {"correct": 0.0, "rouge_l": pytest.approx(2 * 1.0 * 0.5 / 1.5)}
    assert tasks.score("sni", "The rovers won it.", sni)["correct"] == 1.0
    demo = tasks.task_prompt("sni", sni, demos=[sni])
    assert demo.startswith("Name the winner.\nInput: x\nOutput: the rovers won it\n\n") and demo.count("Output:") == 2
    assert presets.notebook_overrides("", "", " gsm, sni ", 2) == {"tasks": ("gsm", "sni"), "seeds": (0, 1)}
    with pytest.raises(KilibError, match="unknown task.*arc"):
        presets.notebook_overrides(tasks="gsm,arc")
    with pytest.raises(KilibError, match="SEEDS must be >= 0"):
        presets.notebook_overrides(seeds=-1)
    assert tasks.score("qa", "The Rovers.", {"question": "who?", "answer": "the rovers"}) == {"correct": 1.0}
    with pytest.raises(KilibError, match="qa asks about the tiny world's facts.*drop it from TASKS"):
        study.study_inputs(dataclasses.replace(presets.TRANSFER_PRESETS["paper"], tasks=("gsm", "qa")))
    with pytest.raises(KilibError, match="Llama-2-13b-hf is not in the local Hugging Face cache.*HF_TOKEN"):
        study.study_inputs(presets.TRANSFER_PRESETS["paper"])  # offline, gated: one line naming the fix


def test_closed_book_rows_ask_about_facts_no_other_role_holds():
    from kilib.tiny import zoo

    world = zoo.world_of(zoo.zoo_config("smoke"))
    rows = tasks.qa_rows(world, {"seed": 4, "train": 30, "eval": 10, "demos": 0})
    roles = {role: {r["fact_id"] for r in rs} for role, rs in rows.items()}
    assert [len(v) for v in roles.values()] == [4, 30, 10, 0]
    assert not roles["eval"] & (roles["train"] | roles["seed"]) and not roles["seed"] & roles["train"]
    for r in rows["eval"]:
        assert (
            r["question"] in world.questions(r["fact_id"], "eval") and r["answer"] == world.facts[r["fact_id"]].object
        )
    with pytest.raises(KilibError, match="qa needs 100000 pre-cutoff facts"):
        tasks.qa_rows(world, {"train": 100000})


def test_paper_task_loaders_map_hub_rows_to_the_task_fields(tmp_path, monkeypatch):
    """GSM8K, MMLU and SNI rows as the Hub has them (local jsonl copies, same split names):
    mapped to the tiny tasks' fields, disjoint seed/train/demo rows, the same draw for the same seed."""
    from kilib.lm.data import write_jsonl

    def folder(name, splits):
        d = tmp_path / name
        d.mkdir()
        for split, rows in splits.items():
            write_jsonl(d / f"{split}.jsonl", rows)
        return str(d)

    gsm = [
        {
            "question": f"q{i}?",
            "answer": f"Add {i} and 1,000.\n{i} + 1000 = <<{i}+1000={i + 1000}>>{i + 1000}\n#### {i + 1000:,}",
        }
        for i in range(30)
    ]
    mmlu = [{"question": f"m{i}?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(30)]
    sni = [
        {"task_name": "t", "id": str(i), "definition": "Copy.", "inputs": f"w{i}", "targets": f"w{i}"}
        for i in range(30)
    ]
    monkeypatch.setattr(
        tasks,
        "PAPER_DATASETS",
        {
            "gsm": {**tasks.PAPER_DATASETS["gsm"], "path": folder("gsm", {"train": gsm, "test": gsm[:10]})},
            "mmlu": {
                **tasks.PAPER_DATASETS["mmlu"],
                "path": folder("mmlu", {"auxiliary_train": mmlu, "dev": mmlu[:5], "test": mmlu[:10]}),
            },
            "sni": {**tasks.PAPER_DATASETS["sni"], "path": folder("sni", {"train": sni, "test": sni[:10]})},
        },
    )
    sizes = {"seed": 4, "train": 12, "eval": 6, "demos": 3}
    rows = tasks.hub_task_rows("gsm", sizes)
    assert {k: len(v) for k, v in rows.items()} == sizes
    assert len({r["question"] for k in ("seed", "train", "demos") for r in rows[k]}) == 4 + 12 + 3  # disjoint
    r = rows["train"][0]
    i = int(r["question"][1:-1])
    # the authors' training format: no calculator annotations, one line, the exemplars' ending
    assert r["answer"] == str(i + 1000)
    assert r["rationale"] == f"Add {i} and 1,000. {i} + 1000 = {i + 1000}. So the answer is {i + 1000}."
    assert tasks.score("gsm", r["rationale"], r) == {"correct": 1.0}
    assert tasks.hub_task_rows("gsm", sizes) == rows  # seeded: the same draw
    # GSM8K's demonstrations are the fixed chain-of-thought exemplars, as open-instruct's 8-shot setting has them
    assert rows["demos"] == [dict(d) for d in tasks.GSM_COT_EXEMPLARS[:3]]
    eight = tasks.hub_task_rows("gsm", {**sizes, "demos": 8})["demos"]
    prompt = tasks.task_prompt("gsm", r, tasks.demonstrations_for(r, eight, 8))
    assert prompt.startswith("Answer the following questions.\n\nQuestion: There are 15 trees in the grove.")
    assert prompt.count("Question:") == 9 and prompt.count("So the answer is") == 8
    assert "left. 23 - 15 is 8. So the answer is 8.\n\nQuestion: q" in prompt and prompt.endswith("?\nAnswer:")
    assert tasks.task_prompt("gsm", r) == f"Answer the following question.\n\nQuestion: {r['question']}\nAnswer:"
    assert all(tasks.score("gsm", d["rationale"], d) == {"correct": 1.0} for d in eight)
    with pytest.raises(KilibError, match="8 chain-of-thought exemplars, not 9: ask for at most 8 shots"):
        tasks.hub_task_rows("gsm", {**sizes, "demos": 9})
    m = tasks.hub_task_rows("mmlu", sizes)
    assert all(x["answer"] == "ABCD"[int(x["question"][1:-1]) % 4] for x in m["train"] + m["demos"])
    # MMLU's demonstrations: the whole dev split in order, and each question gets its subject's first k
    dev = [{**r, "subject": s} for r, s in zip(mmlu[:6], ["high_school_physics"] * 3 + ["virology"] * 3)]
    tasks.PAPER_DATASETS["mmlu"] = {
        **tasks.PAPER_DATASETS["mmlu"],
        "path": folder("mmlu-dev", {"auxiliary_train": mmlu, "dev": dev, "test": [{**mmlu[9], "subject": "virology"}]}),
    }
    m = tasks.hub_task_rows("mmlu", {**sizes, "eval": 1})
    assert [d["question"] for d in m["demos"]] == [r["question"] for r in dev]
    question = m["eval"][0]
    shots = tasks.demonstrations_for(question, m["demos"], 2)
    assert [d["question"] for d in shots] == ["m3?", "m4?"]
    prompt = tasks.task_prompt("mmlu", question, shots)
    assert prompt.startswith("The following are multiple choice questions (with answers) about virology.\n\nm3?\nA. a")
    assert prompt.count("The following") == 1 and prompt.endswith("m9?\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    tiny = {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": "A"}  # no subject: the first k, no header
    assert tasks.demonstrations_for(tiny, [tiny] * 3, 2) == [tiny, tiny] and tasks.task_prompt("mmlu", tiny).startswith(
        "q?"
    )
    s = tasks.hub_task_rows("sni", sizes)["eval"][0]
    assert s["instruction"] == "Copy." and s["output"] == s["input"]
    # MMLU's test file is ordered (by subject): the draw reaches its end, which a 10,000-row
    # streaming buffer never does
    ordered = [
        {"question": f"m{i}?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 0} for i in range(12_000)
    ]
    tasks.PAPER_DATASETS["mmlu"] = {
        **tasks.PAPER_DATASETS["mmlu"],
        "path": folder("mmlu-long", {"auxiliary_train": mmlu, "dev": mmlu[:5], "test": ordered}),
    }
    drawn = [int(x["question"][1:-1]) for x in tasks.hub_task_rows("mmlu", {**sizes, "eval": 200})["eval"]]
    assert len(set(drawn)) == 200 and max(drawn) >= 11_000
    with pytest.raises(KilibError, match="too few rows for gsm: eval \\(10 of 20\\)"):
        tasks.hub_task_rows("gsm", {**sizes, "eval": 20})
    with pytest.raises(KilibError, match="need the field\\(s\\) targets"):
        tasks.task_row("sni", {"definition": "d", "inputs": "i"})
    with pytest.raises(KilibError, match="without '#### <number>'"):
        tasks.task_row("gsm", {"question": "q", "answer": "no marker"})


def _sni_rows(tasks_and_sizes):
    return [
        {
            "task_name": f"task{t:03d}",
            "id": f"{t}-{i}",
            "definition": f"Do task {t}.",
            "inputs": f"x{i}",
            "targets": [f"y{i}"],
        }
        for t, n in tasks_and_sizes
        for i in range(n)
    ]


def _sni_task(row) -> int:
    return int(row["instruction"].removeprefix("Do task ").removesuffix("."))


def test_sni_draw_spreads_over_task_ordered_data(tmp_path, monkeypatch):
    """SNI's rows come task by task: a local copy is shuffled over every row, and the Hub's one
    file per task is drawn across its files, so that the seed, training and evaluation rows
    cover many tasks, not the first few a 10,000-row shuffle buffer reaches."""
    import datasets

    from kilib.lm.data import write_jsonl

    local = tmp_path / "sni"
    local.mkdir()
    ordered = _sni_rows([(t, 400) for t in range(40)])  # 16,000 rows in task order, one file
    write_jsonl(local / "train.jsonl", ordered)
    write_jsonl(local / "test.jsonl", ordered)
    monkeypatch.setattr(
        tasks, "PAPER_DATASETS", {**tasks.PAPER_DATASETS, "sni": {**tasks.PAPER_DATASETS["sni"], "path": str(local)}}
    )
    rows = tasks.hub_task_rows("sni", {"seed": 16, "train": 200, "eval": 100, "demos": 0})
    for role, at_least in (("seed", 10), ("train", 35), ("eval", 30)):
        drawn = {_sni_task(r) for r in rows[role]}
        assert len(drawn) >= at_least and max(drawn) >= 30, (role, sorted(drawn))

    # the Hub: one file per task, streamed, each task giving its share (task 3 has one row to give)
    per_task = tmp_path / "per-task"
    per_task.mkdir()
    for t in range(12):
        write_jsonl(per_task / f"train-task{t:03d}.jsonl", _sni_rows([(t, 1 if t == 3 else 50)]))
    files = [str(f) for f in sorted(per_task.iterdir())]
    data = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    assert data.num_shards == 12
    drawn = tasks.spread_draw(data, 36, seed=0)
    counts = {t: sum(_sni_task(tasks.task_row("sni", r)) == t for r in drawn) for t in range(12)}
    assert len(drawn) == 36 and counts[3] == 1 and all(counts[t] >= 3 for t in counts if t != 3)
    assert len({r["definition"] for r in drawn[:12]}) >= 6  # shuffled together, not file by file
    assert tasks.spread_draw(data, 36, seed=0) == drawn and tasks.spread_draw(data, 36, seed=1) != drawn
    hub = []  # hub_task_rows streams a Hub id through spread_draw
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda path, name=None, split=None, streaming=False: hub.append((path, split, streaming)) or data,
    )
    monkeypatch.setattr(
        tasks, "PAPER_DATASETS", {**tasks.PAPER_DATASETS, "sni": {**tasks.PAPER_DATASETS["sni"], "path": "org/sni"}}
    )
    rows = tasks.hub_task_rows("sni", {"seed": 4, "train": 20, "eval": 12, "demos": 0})
    assert hub == [("org/sni", "train", True), ("org/sni", "test", True)]
    assert len({_sni_task(r) for r in rows["train"]}) >= 9 and len({_sni_task(r) for r in rows["eval"]}) == 12


def test_cache_keys_follow_the_prompt_format(tmp_path, monkeypatch, cache_keys):
    """The extraction, a training run and a baseline key on the text the model is shown, so that
    a change of prompt format (GSM's open-instruct header, say) misses the cache."""
    import dataclasses

    from conftest import KeyRecorded

    keys = cache_keys
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    row = {"question": "q?", "answer": "3", "rationale": "1 + 2 = 3. So the answer is 3."}
    inputs = study.TransferInputs(
        str(folder), str(folder), {"gsm": {k: [row] for k in ("seed", "train", "eval", "demos")}}, ""
    )
    config = presets.TRANSFER_PRESETS["tiny"]
    calls = [
        lambda: study.extraction(inputs, config, "gsm"),
        lambda: study.run_job(inputs, config, "gsm", "lora", 0),
        lambda: study.baseline(inputs, config, "gsm", "student"),
    ]
    original = tasks.task_prompt
    for prompt in (original, lambda task, r, demos=(), **kw: "Q. " + original(task, r, demos, **kw)):
        monkeypatch.setattr(tasks, "task_prompt", prompt)
        for call in calls:
            with pytest.raises(KeyRecorded):
                call()
    for before, after in zip(keys[:3], keys[3:]):
        assert before["prompts"] != after["prompts"]
        assert {k: v for k, v in before.items() if k != "prompts"} == {k: v for k, v in after.items() if k != "prompts"}
    # where answers are cut is part of what the run and the baseline computed
    config = dataclasses.replace(config, stop=("\n",))
    for call in calls:
        with pytest.raises(KeyRecorded):
            call()
    assert [k["prompts"] == a["prompts"] for k, a in zip(keys[3:6], keys[6:9])] == [True, False, False]
    # so is the chat format the prompts are rendered in, and the cue after the assistant tag
    config = dataclasses.replace(config, chat_format="tulu")
    for call in calls:
        with pytest.raises(KeyRecorded):
            call()
    assert all(k["prompts"] != a["prompts"] for k, a in zip(keys[6:9], keys[9:]))
    assert [k.get("chat_format") for k in keys[9:]] == ["tulu", None, "tulu"]  # the run holds its whole config
    assert keys[10]["config"]["chat_format"] == "tulu"


def test_paper_path_runs_on_local_models_and_gsm8k_files(tmp_path, monkeypatch):
    """Notebook 02's paper path on the CPU, with GSM8K-shaped files and two saved Llamas where the
    Hub would be: the 8-shot prompts are the chain-of-thought exemplars, and the extraction, a run
    started from the teacher and the student's baseline all complete."""
    import dataclasses

    from kilib.lm.data import write_jsonl

    tok = make_tokenizer()
    teacher, student = _saved_llama(tmp_path, tok, seed=1), _saved_llama(tmp_path, tok, seed=2)
    data = tmp_path / "gsm8k"
    data.mkdir()
    rows = [{"question": f"q{i}?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(20)]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "test.jsonl", rows[:5])
    monkeypatch.setattr(
        tasks, "PAPER_DATASETS", {**tasks.PAPER_DATASETS, "gsm": {**tasks.PAPER_DATASETS["gsm"], "path": str(data)}}
    )
    paper = presets.TRANSFER_PRESETS["paper"]
    config = dataclasses.replace(
        paper,
        teacher=str(teacher),
        student=str(student),
        tasks=("gsm",),
        methods=("lora", "sensitive"),
        seed_samples=2,
        train_samples=8,
        eval_samples=3,
        rank=2,
        max_new_tokens=(("gsm", 4),),
        eval_batch_size=4,
        train=dataclasses.replace(paper.train, batch_size=4, grad_accum=1, epochs=1),
    )
    inputs = study.study_inputs(config)
    assert inputs.rows["gsm"]["demos"] == [dict(d) for d in tasks.GSM_COT_EXEMPLARS]
    assert config.train.max_length == 2048 and tasks.PAPER_DATASETS["gsm"]["demos"] == "cot-exemplars"
    eight = [(p, cue) for k, _, p, cue in study.eval_prompts(inputs, config, "gsm") if k == 8]
    assert len(eight) == 3 and all(
        p.startswith("Answer the following questions.\n\nQuestion: There are 15 trees") for p, _ in eight
    )
    assert config.chat_format == "tulu" and all(cue == "Answer:" and p.endswith("?") for p, cue in eight)
    # the paper's micro-batches train with gradient checkpointing on, their examples packed into rows
    checkpointing, collators, train = [], [], study.train
    monkeypatch.setattr(
        study,
        "train",
        lambda model, *a, **kw: (
            checkpointing.append(any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()))
            or collators.append(kw.get("data_collator"))
            or train(model, *a, **kw)
        ),
    )
    run = study.run_job(inputs, config, "gsm", "sensitive", 0)
    assert run["initialised"] > 0 and run["train"]["steps"] == 2
    assert config.train.gradient_checkpointing and checkpointing == [True]
    assert [type(c).__name__ for c in collators] == ["PackingCollator"] and collators[0].row_tokens == 2048
    assert sorted((a["shots"], a["item"]) for a in run["answers"]) == [(k, i) for k in (0, 8) for i in range(3)]
    base = study.baseline(inputs, config, "gsm", "student")
    assert len(base["answers"]) == 6 and all(set(a) >= {"prediction", "correct"} for a in base["answers"])


def test_the_paper_profile_trains_and_asks_in_the_authors_tulu_format():
    """Zhong et al. train in open-instruct's Tulu format (finetune.py --use_chat_prompt; their
    data/gsm, data/mmlu rows), and open-instruct's chat evaluation asks in it: the texts here are
    built as those scripts build them, character for character."""
    tok = tasks.use_chat_format(make_tokenizer(chat=False), "tulu")
    eos = tok.eos_token
    gsm = {
        "question": "Jar A has 28 marbles. How many? ",
        "answer": "28",
        "rationale": "Jar A has 28 marbles. So the answer is 28.",
    }
    pair = tasks.train_pair("gsm", gsm, "tulu")
    # the authors' row: user "Answer the following question.\n\nQuestion: ...", assistant "Answer: ..."
    assert pair == {
        "prompt": "Answer the following question.\n\nQuestion: Jar A has 28 marbles. How many?",
        "answer": "Answer: Jar A has 28 marbles. So the answer is 28.",
    }
    assert render_prompt(tok, pair["prompt"]) + render_answer(tok, pair["prompt"], pair["answer"]) == (
        f"<|user|>\n{pair['prompt']}\n<|assistant|>\n{pair['answer']}{eos}\n"
    )
    mmlu = {
        "question": "Which biome is driest?",
        "choices": ["Desert", "Tundra", "Taiga", "Forest"],
        "answer": "A",
        "subject": "high_school_biology",
    }
    assert tasks.train_pair("mmlu", mmlu, "tulu") == {
        "prompt": (
            "The following are multiple choice questions (with answers) about high school biology.\n\n"
            "Which biome is driest?\nA. Desert\nB. Tundra\nC. Taiga\nD. Forest\nAnswer:"
        ),
        "answer": "A",
    }
    # open-instruct's evaluation: prefix + "Question: " + question, the Tulu turn, then "Answer:"
    demos = [dict(d) for d in tasks.GSM_COT_EXEMPLARS[:2]]
    prefix = (
        "Answer the following questions.\n\n"
        + "\n\n".join(f"Question: {d['question']}\nAnswer: {d['rationale']}" for d in demos)
        + "\n\n"
    )
    user, cue = tasks.chat_turn("gsm", tasks.task_prompt("gsm", gsm, demos, evaluation=True), "tulu", evaluation=True)
    assert (
        render_prompt(tok, user) + cue
        == f"<|user|>\n{prefix}Question: {gsm['question'].strip()}\n<|assistant|>\nAnswer:"
    )
    # MMLU: its gen_prompt header (format_subject's extra space), the Tulu turn, then "The answer is:"
    user, cue = tasks.chat_turn(
        "mmlu", tasks.task_prompt("mmlu", mmlu, [mmlu], evaluation=True), "tulu", evaluation=True
    )
    assert render_prompt(tok, user) + cue == (
        "<|user|>\nThe following are multiple choice questions (with answers) about  high school biology.\n\n"
        "Which biome is driest?\nA. Desert\nB. Tundra\nC. Taiga\nD. Forest\nAnswer: A\n\n"
        "Which biome is driest?\nA. Desert\nB. Tundra\nC. Taiga\nD. Forest\nAnswer:\n<|assistant|>\nThe answer is:"
    )
    # ...and scores the letters' tokens as open-instruct does: the last token of " A"
    assert study.letter_tokens(tok, cue) == [tok(" " + c, add_special_tokens=False).input_ids[-1] for c in "ABCD"]
    sni = {"instruction": "Copy.", "input": "w", "output": "w"}
    assert tasks.chat_turn("sni", tasks.task_prompt("sni", sni), "tulu") == ("Copy.\nInput: w\nOutput:", "")
    # without a chat format the prompt is unchanged: the tiny zoo's own template renders it
    assert tasks.chat_turn("gsm", tasks.task_prompt("gsm", gsm), "") == (tasks.task_prompt("gsm", gsm), "")
    tiny = make_tokenizer()
    assert study.letter_tokens(tiny) == [tokenize_sft(tiny, "?", c)["input_ids"][-2] for c in "ABCD"]  # then EOS
    with pytest.raises(KilibError, match="unknown chat format 'chatml'"):
        tasks.use_chat_format(tiny, "chatml")


def test_mmlu_is_scored_by_the_letters_next_token_probability(tmp_path):
    """MMLU answers are the letter most likely next (no generation), from a direct forward pass,
    with the probability the four letters hold."""
    import dataclasses

    tok = make_tokenizer()
    model = make_model("llama", tok, seed=3)
    rows = [
        {"question": f"who won in 20{i}?", "choices": ["a", "b", "c", "d"], "answer": "ABCD"[i % 4]} for i in range(6)
    ]
    inputs = study.TransferInputs("", "", {"mmlu": {"eval": rows, "demos": rows[:1]}}, "")
    config = dataclasses.replace(presets.TRANSFER_PRESETS["tiny"], shots=(("mmlu", 1),), eval_batch_size=4)
    answers = study.evaluate(model, tok, "mmlu", inputs, config)
    assert sorted((a["shots"], a["item"]) for a in answers) == [(k, i) for k in (0, 1) for i in range(6)]
    letters = study.letter_tokens(tok)
    for a in answers:
        prompt = tasks.task_prompt("mmlu", rows[a["item"]], rows[: a["shots"]], evaluation=True)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(render_prompt(tok, prompt)).input_ids])).logits[0, -1]
        probs = torch.softmax(logits.double(), -1)[letters]
        assert a["prediction"] == "ABCD"[int(probs.argmax())]
        assert a["letter_mass"] == pytest.approx(float(probs.sum()), rel=1e-4)
        assert a["correct"] == float(a["prediction"] == rows[a["item"]]["answer"])
