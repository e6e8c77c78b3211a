"""Tests for kilib.evaluation: metrics against hand computation, model helpers against a direct
forward pass of a tiny random Llama built from config (offline, CPU, seconds)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kilib.calm.model import ComposedLM
from kilib.lm import inference
from kilib.lm.inference import (
    choose_by_loglik,
    fit_batch_size,
    generate,
    kv_bytes_per_token,
    next_token_choice,
    sequence_logprob,
)
from kilib.lm.models import attach_lora
from kilib.lm.scoring import contains_answer, exact_match, last_number, normalize_answer, parse_choice, token_f1
from kilib.runtime import KilibError
from kilib.stats import accuracy_with_ci, bootstrap_ci, classification_ci, f1_scores

# ----------------------------------------------------------------------------------------------
# Lexical metrics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  A cat,  an owl & THE dog!  ", "cat owl dog"),
        ("Theory of the atom", "theory of atom"),  # "the" only as a whole word
        ("don't", "dont"),  # punctuation is deleted, as in SQuAD
        ("well-known", "wellknown"),
        ("U.S.A.", "usa"),
        ("The final score was 3-1.", "final score was 3-1"),  # a score keeps its dash
        ("3\u20131", "3-1"),  # en dash between digits -> "-"
        ("It's 2.5 km", "its 2.5 km"),  # a decimal keeps its point
        ("1,000 people", "1000 people"),  # thousands separator dropped
        ("-5", "5"),
        ("\uff21nswer", "answer"),  # NFKC folds full-width letters
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_single_and_multiple_golds():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "eiffel tower") == 0.0
    assert exact_match("3-1", "3 - 1") == 0.0  # "3 - 1" normalises to "3 1"
    assert exact_match("Paris", ["London", "paris!"]) == 1.0
    assert exact_match("Rome", ["London", "Paris"]) == 0.0
    with pytest.raises(KilibError):
        exact_match("Paris", [])


def test_contains_answer_whole_tokens():
    assert contains_answer("I think it is Paris, France.", "paris") == 1.0
    assert contains_answer("The Parisian café", "paris") == 0.0  # not a whole token
    assert contains_answer("the score ended 3-1 after extra time", "3-1") == 1.0
    assert contains_answer("the score ended 13-1", "3-1") == 0.0
    assert contains_answer("won by New York Giants", ["Chiefs", "new york giants"]) == 1.0
    assert contains_answer("anything at all", "the") == 0.0  # empty after normalisation
    assert contains_answer("", "paris") == 0.0


def test_token_f1_hand_computed():
    # pred tokens [cat, sat, on, mat]; gold tokens [cat, on, mat, today]; overlap 3
    assert token_f1("The cat sat on the mat", "a cat on the mat today") == pytest.approx(0.75)
    # multiplicity: overlap is min(count) per token: x 1, y 1 -> 2 of 3 each side
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    # P = 1/2, R = 1 -> 2/3
    assert token_f1("paris france", "Paris") == pytest.approx(2 / 3)
    assert token_f1("rome", "paris") == 0.0
    assert token_f1("paris france", ["rome", "paris", "paris france"]) == 1.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation (SQuAD v2 rule)
    assert token_f1("the", "paris") == 0.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 apples and buys 5 more, so 8 apples.", "8"),
        ("The answer is 1,000.", "1000"),
        ("#### 1,234,567", "1234567"),
        ("It costs $2.50 each", "2.5"),
        ("18.00", "18"),
        ("x = -5", "-5"),
        ("the score was 3-1", "1"),  # a hyphen between digits is not a sign
        ("1, 2, 3", "3"),  # ", " separates numbers; it is not a thousands separator
        ("007", "7"),
        ("-0", "0"),
        ("is 42.", "42"),  # sentence-final point
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


# ----------------------------------------------------------------------------------------------
# Strict choice parsing
# ----------------------------------------------------------------------------------------------

FEVER = ("a", "b", "c")
MMLU = ("A", "B", "C", "D")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(a)", "a"),
        (" (b) refutes", "b"),
        ("A: (c)", "c"),
        ("(A)", "a"),  # case-insensitive: labels stay distinct under casefolding
        ("( b )", "b"),
        ("b) refutes", "b"),
        ("b. refutes", "b"),
        ("c", "c"),
        ("c\nClaim: next", "c"),
        ("Answer: (b)", "b"),
        ("the answer is (c)", "c"),
        ("(a) supports (a)", "a"),  # the same label twice is not ambiguous
    ],
)
def test_parse_choice_fever_accepted(text, expected):
    assert parse_choice(text, FEVER) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        None,
        "supports",
        "The claim is supported",
        "a supports",  # bare letter followed by words: "a" is also an article
        "b.c",
        "(d)",
        "(a) or (b)",  # ambiguous
        "(a)\nClaim: Paris is in Spain. A: (b)",  # continued into the next demonstration
        "I would say (b)",  # not at the start
    ],
)
def test_parse_choice_fever_rejected(text):
    assert parse_choice(text, FEVER) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        (" B. Paris", "B"),
        ("B\n\nQuestion: next", "B"),
        ("A", "A"),
        ("A.", "A"),
        ("A: (D)", "D"),  # "A:" is the answer prefix, not option A
        ("c", "C"),
        ("The answer is C", "C"),
        ("A: Paris", None),
        ("B: Paris", None),
        ("Bx", None),
        ("Because", None),
        ("B or (C)", None),
    ],
)
def test_parse_choice_mmlu(text, expected):
    assert parse_choice(text, MMLU) == expected


def test_parse_choice_case_sensitive_when_labels_collide():
    assert parse_choice("(a)", ("a", "A")) == "a"
    assert parse_choice("(A)", ("a", "A")) == "A"


def test_parse_choice_bad_labels():
    with pytest.raises(KilibError):
        parse_choice("(a)", ())
    with pytest.raises(KilibError):
        parse_choice("(a)", ("a", "a"))
    with pytest.raises(KilibError):
        parse_choice("(a)", (" a",))


# ----------------------------------------------------------------------------------------------
# Confidence intervals and F1
# ----------------------------------------------------------------------------------------------


def _bernoulli(n, p, seed):
    rng = np.random.default_rng(seed)
    return (rng.random(n) < p).astype(float)


def test_bootstrap_ci_brackets_mean_and_matches_normal_width():
    values = _bernoulli(2000, 0.3, seed=1)
    mean, low, high = bootstrap_ci(values)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # percentile bootstrap of a mean is close to the normal interval for n = 2000
    expected_width = 2 * 1.959964 * math.sqrt(mean * (1 - mean) / len(values))
    assert (high - low) == pytest.approx(expected_width, rel=0.15)
    # lower confidence -> narrower interval
    _, low90, high90 = bootstrap_ci(values, confidence=0.90)
    assert high90 - low90 < high - low


def test_bootstrap_ci_narrows_with_more_data():
    small = bootstrap_ci(_bernoulli(40, 0.5, seed=2))
    large = bootstrap_ci(_bernoulli(4000, 0.5, seed=2))
    assert (large[2] - large[1]) < (small[2] - small[1]) / 4  # width ~ 1/sqrt(n): 10x fewer


def test_bootstrap_ci_deterministic_for_a_seed():
    values = _bernoulli(300, 0.6, seed=3)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_bootstrap_ci_degenerate_and_empty():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0.0] * 50) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    with pytest.raises(KilibError):
        bootstrap_ci([])
    with pytest.raises(KilibError):
        bootstrap_ci([1.0, float("nan")])


def test_accuracy_with_ci():
    correct = [True, False, True, True] * 25
    result = accuracy_with_ci(correct, seed=1, n_resamples=500)
    assert set(result) == {"accuracy", "ci_low", "ci_high", "n"}
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["n"] == 100
    assert result["ci_low"] < 0.75 < result["ci_high"]
    assert (result["accuracy"], result["ci_low"], result["ci_high"]) == bootstrap_ci(
        [float(c) for c in correct], seed=1, n_resamples=500
    )


def test_f1_scores_hand_computed():
    preds = ["a", "b", None, "a"]
    golds = ["a", "b", "b", "c"]
    # a: TP 1, FP 1, FN 0 -> 2/3;  b: TP 1, FP 0, FN 1 -> 2/3;  c: TP 0, FP 0, FN 1 -> 0
    result = f1_scores(preds, golds, FEVER)
    assert result["per_label_f1"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 0.0})
    assert result["macro_f1"] == pytest.approx(4 / 9)
    assert result["accuracy"] == pytest.approx(0.5)
    # micro: 2*2 / (2*2 + 1 + 2) = 4/7, above accuracy because of the None
    assert result["micro_f1"] == pytest.approx(4 / 7)
    assert result["n"] == 4 and result["n_unparsed"] == 1


def _direct_f1(preds, golds, labels):
    per = {}
    tp_all = fp_all = fn_all = 0
    for c in labels:
        tp = sum(1 for p, g in zip(preds, golds) if p == c and g == c)
        fp = sum(1 for p, g in zip(preds, golds) if p == c and g != c)
        fn = sum(1 for p, g in zip(preds, golds) if g == c and p != c)
        per[c] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    micro = 2 * tp_all / (2 * tp_all + fp_all + fn_all)
    return per, sum(per.values()) / len(labels), micro


def test_f1_scores_against_direct_counting():
    rng = random.Random(0)
    golds = [rng.choice(FEVER) for _ in range(300)]
    preds = [g if rng.random() < 0.6 else rng.choice(FEVER + (None,)) for g in golds]
    per, macro, micro = _direct_f1(preds, golds, FEVER)
    result = f1_scores(preds, golds, FEVER)
    assert result["per_label_f1"] == pytest.approx(per)
    assert result["macro_f1"] == pytest.approx(macro)
    assert result["micro_f1"] == pytest.approx(micro)
    assert result["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(preds, golds)]))
    assert result["micro_f1"] > result["accuracy"]  # some None predictions

    parsed = [p if p is not None else "a" for p in preds]
    full = f1_scores(parsed, golds, FEVER)
    assert full["micro_f1"] == pytest.approx(full["accuracy"])  # one label per example


def test_classification_ci_is_f1_scores_on_each_resample():
    """The vectorised bootstrap against f1_scores recomputed on the same resampled indices."""
    rng = random.Random(3)
    labels = ["a", "b", "c"]
    golds = [rng.choice(labels) for _ in range(60)]
    preds = [g if rng.random() < 0.5 else (None if rng.random() < 0.4 else rng.choice(labels)) for g in golds]
    out = classification_ci(preds, golds, labels, n_resamples=300, seed=5)
    point = f1_scores(preds, golds, labels)
    pick = np.random.default_rng(5).integers(0, 60, size=(300, 60))  # one batch: the function's own draw
    direct = {k: [] for k in ("accuracy", "micro_f1", "macro_f1")}
    for row in pick:
        s = f1_scores([preds[i] for i in row], [golds[i] for i in row], labels)
        for k in direct:
            direct[k].append(s[k])
    for k, values in direct.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert out[k] == point[k]
        assert out[f"{k}_low"] == pytest.approx(min(low, point[k]), abs=1e-12)
        assert out[f"{k}_high"] == pytest.approx(max(high, point[k]), abs=1e-12)
    assert out["micro_f1"] > out["accuracy"]  # unparseable answers are wrong but no label's false positive
    assert out["n"] == 60 and out["n_unparsed"] == sum(p is None for p in preds)


def test_f1_scores_errors():
    with pytest.raises(KilibError):
        f1_scores(["a"], ["a", "b"], FEVER)
    with pytest.raises(KilibError):
        f1_scores(["a"], ["d"], FEVER)
    with pytest.raises(KilibError):
        f1_scores(["supports"], ["a"], FEVER)
    with pytest.raises(KilibError):
        f1_scores([], [], FEVER)


# ----------------------------------------------------------------------------------------------
# Model helpers on a tiny random Llama
# ----------------------------------------------------------------------------------------------

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "Claim: Paris is the capital of France. A: (a) supports",
    "Question: what is 3 + 4? Answer: 7",
    "hello world\nnew line here",
]


@pytest.fixture(scope="module")
def tokenizer():
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS * 10, trainer)
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,  # peaky logits: outputs depend strongly on the context
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


PROMPTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog and",
    "Claim: Paris is the capital of France. A:",
    "Question: what is 3 + 4?",
]


def _direct_logprob(model, tokenizer, prompt, continuation):
    """One unpadded forward pass over the separately tokenised ids, log_softmax, sum."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logprobs[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(cont_ids))


def test_sequence_logprob_matches_direct_forward(model, tokenizer):
    prompt, continuation = "Claim: Paris is", " the capital of France"
    expected = _direct_logprob(model, tokenizer, prompt, continuation)
    (got,) = sequence_logprob(model, tokenizer, [prompt], [continuation])
    assert got == pytest.approx(expected, abs=1e-4)
    assert got < 0


def test_sequence_logprob_boundary_is_exact(model, tokenizer):
    # "hel" + "lo world" tokenised jointly merges across the boundary; kilib tokenises separately
    prompt, continuation = "hel", "lo world"
    joint = tokenizer(prompt + continuation)["input_ids"]
    separate = tokenizer(prompt)["input_ids"] + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    assert joint != separate  # the case is meaningful for this tokenizer
    (got,) = sequence_logprob(model, tokenizer, [prompt], [continuation])
    assert got == pytest.approx(_direct_logprob(model, tokenizer, prompt, continuation), abs=1e-4)


def test_sequence_logprob_same_inside_padded_batch(model, tokenizer):
    prompts = ["hi", "the quick brown fox jumps over", "Question: what is 3 + 4? Answer:", "A:"]
    continuations = [" there friend", " the lazy dog", " 7", " (b) refutes the claim entirely"]
    alone = [sequence_logprob(model, tokenizer, [p], [c])[0] for p, c in zip(prompts, continuations)]
    batched = sequence_logprob(model, tokenizer, prompts, continuations, batch_size=4)
    direct = [_direct_logprob(model, tokenizer, p, c) for p, c in zip(prompts, continuations)]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert batched == pytest.approx(direct, abs=1e-4)
    assert len(set(np.round(batched, 3))) == len(batched)  # distinct values: rows not mixed up


def test_sequence_logprob_errors(model, tokenizer):
    with pytest.raises(KilibError):
        sequence_logprob(model, tokenizer, ["a", "b"], ["c"])
    with pytest.raises(KilibError):
        sequence_logprob(model, tokenizer, ["a"], [""])


def test_choose_by_loglik_picks_highest_direct_logprob(model, tokenizer):
    prompts = ["hello", "Claim: Paris is the capital of France. A:", "Question: what is 3 + 4? Answer:", "the"]
    choices = [" world", " (a) supports", " 7", " quick brown fox jumps", " dog"]
    direct = [[_direct_logprob(model, tokenizer, p, c) for c in choices] for p in prompts]
    n_tokens = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices]
    expected_sum = [int(np.argmax(row)) for row in direct]
    expected_mean = [int(np.argmax(np.array(row) / n_tokens)) for row in direct]
    assert len(set(expected_sum + expected_mean)) > 1  # the test can tell choices apart

    assert choose_by_loglik(model, tokenizer, prompts, choices) == expected_sum
    assert choose_by_loglik(model, tokenizer, prompts, choices, normalize=True) == expected_mean
    per_prompt = choose_by_loglik(model, tokenizer, prompts, [choices] * len(prompts), batch_size=3)
    assert per_prompt == expected_sum
    assert choose_by_loglik(model, tokenizer, prompts[1], choices) == expected_sum[1:2]


def test_choose_by_loglik_errors(model, tokenizer):
    with pytest.raises(KilibError):
        choose_by_loglik(model, tokenizer, ["a", "b"], [[" x"], [" y"], [" z"]])
    with pytest.raises(KilibError):
        choose_by_loglik(model, tokenizer, "a", [])


def _generate_direct(model, tokenizer, prompt, max_new_tokens):
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generate_returns_only_new_text(model, tokenizer):
    outputs = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=1)
    for prompt, output in zip(PROMPTS, outputs):
        assert output == _generate_direct(model, tokenizer, prompt, 8)
        assert not output.startswith(prompt)
        assert output


def test_generate_is_batch_invariant(model, tokenizer):
    singles = generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=1)
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS))
    pairs = generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    assert len(set(singles)) == len(PROMPTS)  # prompts give different outputs
    assert batched == singles
    assert pairs == singles
    assert tokenizer.padding_side == "right"  # restored

    # Control: the same left-padded batch with padding attended (all-ones mask) changes the
    # output, so the equality above depends on the padding being handled.
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    with torch.no_grad():
        leaky = model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=torch.ones_like(encoded["input_ids"]),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = encoded["input_ids"].shape[1]
    assert tokenizer.batch_decode(leaky[:, width:], skip_special_tokens=True) != singles


def _ascii_stop(text):
    """A stop string that occurs in ``text`` after its first character (ASCII, one char)."""
    for k, ch in enumerate(text):
        if k >= 2 and ch.isascii() and ch.isprintable() and not ch.isspace():
            return ch
    pytest.skip("no ASCII character in the generated text to stop at")


def test_generate_truncates_at_stop_strings(model, tokenizer):
    reference = generate(model, tokenizer, PROMPTS, max_new_tokens=16)
    stop = _ascii_stop(reference[2])
    cut = generate(model, tokenizer, PROMPTS, max_new_tokens=16, stop=[stop])
    for ref, out in zip(reference, cut):
        expected = ref[: ref.find(stop)] if stop in ref else ref
        assert out == expected
    assert cut[2] != reference[2] and stop not in cut[2]

    # Several stop strings: the earliest occurrence wins; absent stop strings change nothing.
    second = _ascii_stop(reference[1][::-1])
    both = generate(model, tokenizer, PROMPTS[1:2], max_new_tokens=16, stop=[second, stop, "\x07never"])
    ref = reference[1]
    ends = [ref.find(s) for s in (second, stop) if s in ref]
    assert both == [ref[: min(ends)]]
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=16, stop=["\x07never"]) == reference


def test_generate_edge_cases(model, tokenizer):
    assert generate(model, tokenizer, [], max_new_tokens=4) == []
    assert len(generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2, progress=True)) == 2
    tokenizer.pad_token = None
    try:
        with pytest.raises(KilibError):
            generate(model, tokenizer, ["hello"], max_new_tokens=2)
    finally:
        tokenizer.pad_token = "<pad>"
    assert tokenizer.pad_token_id == 0


def test_model_mode_restored(model, tokenizer):
    model.train()
    try:
        generate(model, tokenizer, ["hello"], max_new_tokens=2)
        assert model.training
        sequence_logprob(model, tokenizer, ["hello"], [" world"])
        assert model.training
    finally:
        model.eval()


def test_token_f1_bag_overlap_direct():
    # token_f1's bag-of-tokens overlap, computed independently
    a, b = "x x y z".split(), "x y y".split()
    same = sum((Counter(a) & Counter(b)).values())
    p, r = same / len(a), same / len(b)
    assert token_f1("x x y z", "x y y") == pytest.approx(2 * p * r / (p + r))


def test_generate_stops_early_at_stop_string(model, tokenizer):
    """The stopping criterion ends generation once every row has a stop string (fewer forwards)."""
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        reference = generate(model, tokenizer, PROMPTS[2:3], max_new_tokens=16)
        full = len(calls)
        stop = _ascii_stop(reference[0])
        calls.clear()
        cut = generate(model, tokenizer, PROMPTS[2:3], max_new_tokens=16, stop=[stop])
    finally:
        handle.remove()
    assert cut[0] == reference[0][: reference[0].find(stop)]
    assert len(calls) < full


def test_next_token_choice_is_the_argmax_of_a_direct_forward_pass(model, tokenizer):
    """open-instruct's MMLU scoring: the candidate token most likely next, from one unpadded
    forward pass per prompt; the same inside right-padded batches; probabilities are the full
    softmax's."""
    candidates = [tokenizer(t, add_special_tokens=False)["input_ids"][-1] for t in (" a", " b", " c", " d")]
    assert len(set(candidates)) == 4
    direct = []
    for p in PROMPTS:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokenizer(p)["input_ids"]])).logits[0, -1].double()
        direct.append(torch.softmax(logits, -1)[candidates].tolist())
    expected = [int(np.argmax(row)) for row in direct]
    assert len(set(expected)) > 1  # the prompts pick different candidates
    for batch_size in (1, 3, len(PROMPTS)):
        got = next_token_choice(model, tokenizer, PROMPTS, candidates, batch_size=batch_size)
        assert [i for i, _ in got] == expected
        for (_, probs), row in zip(got, direct):
            assert probs == pytest.approx(row, rel=1e-4, abs=1e-7)
    # the index is the position in the candidates as passed
    ((index, _),) = next_token_choice(
        model, tokenizer, PROMPTS[:1], [candidates[expected[0] - 1], candidates[expected[0]]]
    )
    assert index == 1
    with pytest.raises(KilibError, match="distinct candidate token ids"):
        next_token_choice(model, tokenizer, PROMPTS, [candidates[0], candidates[0]])


# ----------------------------------------------------------------------------------------------
# Scoring passes: no KV cache, logits only where scored
# ----------------------------------------------------------------------------------------------


class HeadRows:
    """Counts the rows the output head projects and keeps each forward's output."""

    def __init__(self, model):
        self.rows, self.outputs = 0, []
        self.handles = [
            model.get_output_embeddings().register_forward_hook(self.count),
            model.register_forward_hook(self.keep),
        ]

    def count(self, module, args, output):
        self.rows += args[0].shape[:-1].numel()

    def keep(self, module, args, output):
        self.outputs.append(output)

    def remove(self):
        for h in self.handles:
            h.remove()


class NoKeywordsLM(torch.nn.Module):
    """A causal LM whose forward takes neither ``logits_to_keep`` nor ``use_cache``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def device(self):
        return self.model.device

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


SCORED_PROMPTS = ["hi", "the quick brown fox jumps over", "Question: what is 3 + 4? Answer:", "A:"]
SCORED_CONTINUATIONS = [" there friend", " the lazy dog", " 7", " (b) refutes the claim entirely"]


def _scored(tokenizer, monkeypatch=None, sliced=False, model=None, wrap=lambda m: m):
    """(sequence_logprob scores, next_token_choice output, head rows of each, outputs) in one run."""
    if sliced:
        monkeypatch.setattr(inference, "SLICED_LOGITS_DEVICES", ("cpu", "cuda"))
    counter = HeadRows(model)
    try:
        scores = sequence_logprob(wrap(model), tokenizer, SCORED_PROMPTS, SCORED_CONTINUATIONS, batch_size=3)
        score_rows, counter.rows = counter.rows, 0
        choices = next_token_choice(wrap(model), tokenizer, SCORED_PROMPTS, [5, 6, 7], batch_size=3)
    finally:
        counter.remove()
    return scores, choices, score_rows, counter.rows, counter.outputs


def test_scoring_builds_no_cache_and_projects_only_the_scored_positions(model, tokenizer, monkeypatch):
    full_scores, full_choices, full_rows, _, outputs = _scored(tokenizer, model=model)
    assert outputs and all(o.past_key_values is None for o in outputs)  # no KV cache is built
    lengths = [len(tokenizer(p)["input_ids"]) for p in SCORED_PROMPTS]
    n_cont = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in SCORED_CONTINUATIONS]
    totals = sorted((p + c for p, c in zip(lengths, n_cont)), reverse=True)
    assert full_rows == 3 * totals[0] + totals[3]  # on the CPU: every position of both padded batches

    scores, choices, score_rows, choice_rows, outputs = _scored(tokenizer, monkeypatch, True, model)
    assert all(o.past_key_values is None for o in outputs)
    assert score_rows == sum(n_cont)  # the positions that predict a continuation token, no more
    assert choice_rows == len(SCORED_PROMPTS)  # each prompt's last position
    assert scores == pytest.approx(full_scores, abs=1e-5)
    direct = [_direct_logprob(model, tokenizer, p, c) for p, c in zip(SCORED_PROMPTS, SCORED_CONTINUATIONS)]
    assert scores == pytest.approx(direct, abs=1e-4)
    assert [c for c, _ in choices] == [c for c, _ in full_choices]
    for (_, probs), (_, full) in zip(choices, full_choices):
        assert probs == pytest.approx(full, rel=1e-5)


def test_logits_to_keep_reaches_the_model_through_wrappers_or_is_not_passed(model, tokenizer, monkeypatch):
    from kilib.memory.model import attach_memory

    takes = inference._forward_takes
    assert takes(model, "logits_to_keep") and takes(model, "use_cache")
    lora = attach_lora(LlamaForCausalLM(model.config), r=4)
    assert takes(lora, "logits_to_keep")
    memory = attach_memory(LlamaForCausalLM(model.config))
    assert takes(memory, "logits_to_keep")
    composed = ComposedLM(LlamaForCausalLM(model.config), LlamaForCausalLM(model.config), every=1)
    assert takes(composed, "logits_to_keep")
    memory.remove()
    composed.remove()
    assert not takes(NoKeywordsLM(model), "logits_to_keep") and not takes(NoKeywordsLM(model), "use_cache")

    # A forward without the keywords gets the full logits, and the same scores as the model itself.
    reference = _scored(tokenizer, model=model)
    scores, choices, score_rows, _, _ = _scored(tokenizer, monkeypatch, True, model, wrap=NoKeywordsLM)
    assert scores == reference[0] and choices == reference[1]
    assert score_rows == reference[2]


def test_scoring_through_wrappers_matches_the_model(model, tokenizer):
    """The memory model and CALM's composition score with use_cache off as their own forward
    computes: the same as calling them directly, position by position."""
    from kilib.memory.model import attach_memory

    torch.manual_seed(1)
    composed = ComposedLM(model, LlamaForCausalLM(model.config).eval(), every=1, zero_init=False)
    memory = None
    try:
        for wrapped in (composed, "memory"):
            if wrapped == "memory":
                composed.remove()
                wrapped = memory = attach_memory(model)
            (got,) = sequence_logprob(wrapped, tokenizer, ["Claim: Paris is"], [" the capital of France"])
            expected = _direct_logprob(wrapped, tokenizer, "Claim: Paris is", " the capital of France")
            assert got == pytest.approx(expected, abs=1e-4)
            assert got != pytest.approx(_direct_logprob(model, tokenizer, "Claim: Paris is", " the capital"), abs=1e-3)
    finally:
        composed.remove()
        if memory is not None:
            memory.remove()


# ----------------------------------------------------------------------------------------------
# Batches sized to the GPU's free memory
# ----------------------------------------------------------------------------------------------


class ConfigOnly:
    """What fit_batch_size reads of a model: its config, dtype and device."""

    def __init__(self, config, dtype=torch.bfloat16, device="cuda"):
        self.config, self.dtype, self.device = config, dtype, torch.device(device)


LLAMA_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)
GQA_8B = LlamaConfig(  # Llama-3-8B: 8 key-value heads for 32 query heads
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
WIDE_HEADS = LlamaConfig(  # a head width set apart from hidden_size / heads (as Gemma's)
    hidden_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=4, head_dim=256, vocab_size=1000
)
GIB = 2**30


def _direct_fit(layers, kv_heads, head_dim, vocab, element, tokens, free, logit_rows=1):
    per_row = 2 * layers * kv_heads * head_dim * element * tokens + logit_rows * vocab * (element + 4)
    return max(1, min(64, int(0.8 * free) // per_row))


@pytest.mark.parametrize(
    "config, layout",
    [(LLAMA_7B, (32, 32, 128, 32000)), (GQA_8B, (32, 8, 128, 128256)), (WIDE_HEADS, (28, 4, 256, 1000))],
)
@pytest.mark.parametrize("free_gib", [0.25, 8, 20, 70])
@pytest.mark.parametrize("dtype, element", [(torch.bfloat16, 2), (torch.float32, 4)])
def test_fit_batch_size_against_a_direct_computation(config, layout, free_gib, dtype, element):
    layers, kv_heads, head_dim, vocab = layout
    assert kv_bytes_per_token(config, dtype) == 2 * layers * kv_heads * head_dim * element
    free = int(free_gib * GIB)
    for prompt, new in ((512, 32), (2048, 256), (40, 1)):
        got = fit_batch_size(ConfigOnly(config, dtype), 16, prompt, new, free_bytes=free)
        assert got == _direct_fit(layers, kv_heads, head_dim, vocab, element, prompt + new, free)
        scoring = fit_batch_size(ConfigOnly(config, dtype), 16, prompt, 0, free_bytes=free, logit_rows=new)
        assert scoring == _direct_fit(layers, kv_heads, head_dim, vocab, element, prompt, free, logit_rows=new)


def test_fit_batch_size_worked_examples():
    # Llama-7B in bf16: 0.5 MiB of KV cache per token; 544 tokens and 32000 x 6 bytes of logits a row
    assert kv_bytes_per_token(LLAMA_7B, torch.bfloat16) == 2**19
    assert fit_batch_size(ConfigOnly(LLAMA_7B), 16, 512, 32, free_bytes=8 * GIB) == 24  # 6.87e9 // 285404672
    assert fit_batch_size(ConfigOnly(LLAMA_7B), 16, 512, 32, free_bytes=70 * GIB) == 64  # the cap
    assert fit_batch_size(ConfigOnly(LLAMA_7B), 16, 4096, 512, free_bytes=GIB // 4) == 1  # at least one row
    # GQA keeps a quarter of the keys and values: four times the rows of the same model without it
    gqa = LlamaConfig(**{**LLAMA_7B.to_dict(), "num_key_value_heads": 8})
    assert fit_batch_size(ConfigOnly(gqa), 16, 512, 32, free_bytes=2 * GIB) == 24  # 1.72e9 // 71495168
    assert fit_batch_size(ConfigOnly(LLAMA_7B), 16, 512, 32, free_bytes=2 * GIB) == 6  # 1.72e9 // 285404672


def test_fit_batch_size_keeps_the_request_on_the_cpu(model):
    assert fit_batch_size(model, 16, 512, 32) == 16
    assert fit_batch_size(ConfigOnly(LLAMA_7B, device="cpu"), 5, 512, 32) == 5
    assert fit_batch_size(model, 16, 512, 32, free_bytes=GIB) == 64  # measured memory is used wherever given
    with pytest.raises(KilibError, match="prompt_tokens"):
        fit_batch_size(model, 16, 0, 32, free_bytes=GIB)


def test_composed_model_counts_both_caches_and_the_bridged_states(model):
    augment = LlamaForCausalLM(model.config).eval()
    composed = ComposedLM(model, augment, every=1)
    try:
        one = kv_bytes_per_token(model.config, torch.float32)
        states = len(composed.plan) * model.config.hidden_size * 4
        assert composed.cache_bytes_per_token() == 2 * one + states
        free = 10**7
        per_row = composed.cache_bytes_per_token() * 12 + model.config.vocab_size * 8
        assert fit_batch_size(composed, 16, 10, 2, free_bytes=free) == min(64, int(0.8 * free) // per_row)
    finally:
        composed.remove()


def test_auto_batch_size_sizes_generation_and_scoring(model, tokenizer, monkeypatch):
    calls, rows = [], []
    real = inference.fit_batch_size

    def fit(m, requested, prompt_tokens, new_tokens, **kwargs):
        calls.append((requested, prompt_tokens, new_tokens, kwargs.get("logit_rows", 1)))
        assert real(m, requested, prompt_tokens, new_tokens, **kwargs) == requested  # on the CPU
        return 2

    reference = generate(model, tokenizer, PROMPTS, max_new_tokens=5)
    monkeypatch.setattr(inference, "fit_batch_size", fit)
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size="auto") == reference
        longest = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
        assert calls == [(16, longest, 5, 1)] and max(rows) == 2
        calls.clear()
        rows.clear()
        got = sequence_logprob(model, tokenizer, SCORED_PROMPTS, SCORED_CONTINUATIONS, batch_size="auto")
        assert got == sequence_logprob(model, tokenizer, SCORED_PROMPTS, SCORED_CONTINUATIONS, batch_size=2)
        totals = [
            len(tokenizer(p)["input_ids"]) + len(tokenizer(c, add_special_tokens=False)["input_ids"])
            for p, c in zip(SCORED_PROMPTS, SCORED_CONTINUATIONS)
        ]
        assert calls == [(16, max(totals), 0, max(totals))]  # full logits on the CPU: every position
        assert set(rows) == {2}
        calls.clear()
        next_token_choice(model, tokenizer, SCORED_PROMPTS, [5, 6, 7], batch_size="auto")
        assert calls[0][2:] == (0, max(len(tokenizer(p)["input_ids"]) for p in SCORED_PROMPTS))
    finally:
        handle.remove()
    with pytest.raises(KilibError, match="'auto'"):
        sequence_logprob(model, tokenizer, ["a"], [" b"], batch_size="big")
