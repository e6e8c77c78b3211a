"""Batched greedy generation and log-likelihood scoring for any Hugging Face causal LM."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from kilib.lm.models import padding_side
from kilib.runtime import KilibError

# ----------------------------------------------------------------------------------------------
# Model helpers: generation and log-likelihood
# ----------------------------------------------------------------------------------------------


def _model_device(model):
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def _batches(order: list[int], batch_size: int, progress: bool, desc: str):
    if int(batch_size) < 1:
        raise KilibError(f"batch_size must be at least 1 (got {batch_size})")
    starts = range(0, len(order), int(batch_size))
    if progress:
        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield order[start : start + int(batch_size)]


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        index = text.find(s)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.extend([configured] if isinstance(configured, int) else list(configured))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


class StopOnText(StoppingCriteria):
    """Marks a row finished once its decoded new text (the tokens after ``prompt_length``)
    contains one of the ``stop`` strings."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int, rows: int):
        self.tokenizer, self.stop = tokenizer, stop
        self.prompt_length = prompt_length
        self.done = [False] * rows

    def __call__(self, input_ids, scores, **kwargs):
        for row in range(input_ids.shape[0]):
            if not self.done[row]:
                new = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
                self.done[row] = any(s in new for s in self.stop)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy generation for each prompt; returns only the new text, cut before the first stop string.

    Prompts are tokenised as the tokenizer does by default (special tokens such as BOS
    included), left-padded in batches (``tokenizer.padding_side`` is set to "left" for the
    call and restored afterwards) with an attention mask, and decoded with
    ``skip_special_tokens=True``. Generation stops at the model's or the tokenizer's EOS token,
    after ``max_new_tokens``, or once the new text of a row contains a stop string (a stopping
    criterion that decodes only the generated tokens, so a stop string never matches across
    the prompt); the text is then truncated at the first occurrence of any stop string, which is
    the reference behaviour. Prompts are batched longest first to limit padding; the output
    for a prompt does not depend on its batch (tested against batch size 1). The model runs
    in eval mode under ``torch.inference_mode()``; its previous mode is restored.

    transformers' own ``stop_strings=`` is not used: it matches stop strings against the tail
    of the whole sequence, prompt included, so it can stop where post-hoc truncation would not.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        return []
    if tokenizer.pad_token_id is None:
        raise KilibError(
            "the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token before generating"
        )
    if int(max_new_tokens) < 1:
        raise KilibError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    stop = [s for s in ([stop] if isinstance(stop, str) else list(stop)) if s]

    # transformers 5 fills every None field of a passed config from model.generation_config, so
    # sampling fields a chat model ships (temperature 0.6, top_p 0.9) are set to their neutral
    # values here rather than to None; greedy decoding ignores them either way.
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.num_return_sequences = 1
    config.temperature = 1.0
    config.top_p = 1.0
    config.top_k = 50
    config.typical_p = 1.0
    config.repetition_penalty = 1.0
    config.no_repeat_ngram_size = 0
    config.min_new_tokens = None
    config.min_length = 0
    config.max_length = None
    config.max_new_tokens = int(max_new_tokens)
    config.pad_token_id = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    config.eos_token_id = eos or None

    device = _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), padding_side(tokenizer, "left"):
            for batch in _batches(order, batch_size, progress, "generate"):
                encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
                encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
                prompt_length = encoded["input_ids"].shape[1]
                criteria = (
                    StoppingCriteriaList([StopOnText(tokenizer, stop, prompt_length, len(batch))]) if stop else None
                )
                generated = model.generate(**encoded, generation_config=config, stopping_criteria=criteria)
                texts = tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
                for i, text in zip(batch, texts):
                    outputs[i] = _cut_at_stop(text, stop)
    finally:
        model.train(was_training)
    return outputs


def _pair_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    continuation_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise KilibError(
            f"prompt {prompt[:40]!r} tokenises to no tokens, so the first continuation token has no context: "
            "use a non-empty prompt or a tokenizer that adds a BOS token"
        )
    if not continuation_ids:
        raise KilibError(f"continuation {continuation!r} tokenises to no tokens: pass a non-empty continuation")
    return prompt_ids + continuation_ids, len(continuation_ids)


def _right_padded(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) for token id lists, right-padded to the longest."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def _continuation_logprobs(model, tokenizer, prompts, continuations, batch_size, progress=False):
    """(sum of log-probs, token count) per pair; see :func:`sequence_logprob`."""
    if len(prompts) != len(continuations):
        raise KilibError(
            f"got {len(prompts)} prompts and {len(continuations)} continuations: pass one continuation per prompt"
        )
    pairs = [_pair_ids(tokenizer, str(p), str(c)) for p, c in zip(prompts, continuations)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _model_device(model)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, batch_size, progress, "log-likelihood"):
                input_ids, attention_mask = _right_padded([pairs[i][0] for i in batch], pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                for row, i in enumerate(batch):
                    ids, n_cont = pairs[i]
                    start = len(ids) - n_cont
                    # logits at position t predict token t + 1
                    step_logits = logits[row, start - 1 : len(ids) - 1].float()
                    targets = torch.tensor(ids[start:], dtype=torch.long, device=step_logits.device)
                    logprobs = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
                    results[i] = (float(logprobs.sum()), n_cont)
                del logits
    finally:
        model.train(was_training)
    return results


def sequence_logprob(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each (prompt, continuation) pair.

    The prompt is tokenised as the tokenizer does by default (BOS included) and the
    continuation without special tokens, separately, and the ids are concatenated, so the
    boundary is exact (tokenising the joined string could merge tokens across it). Batches are
    right-padded with an attention mask; padding never enters a score. Log-softmax is taken in
    float32. The model runs in eval mode under ``torch.inference_mode()``.
    """
    prompts, continuations = list(prompts), list(continuations)
    return [score for score, _ in _continuation_logprobs(model, tokenizer, prompts, continuations, batch_size)]


def choose_by_loglik(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    choices: Sequence[Sequence[str]] | Sequence[str],
    normalize: bool = False,
    batch_size: int = 16,
) -> list[int]:
    """Multiple choice by log-likelihood (MMLU-style): the index of the best choice per prompt.

    Forms: one prompt and a list of choices (returns one index in a list); a list of prompts
    and one shared list of choices (e.g. [" A", " B", " C", " D"] for MMLU); or a list of
    prompts and a list of choice lists, one per prompt. Each choice is scored with
    :func:`sequence_logprob`; ``normalize=True`` divides by the choice's token count (the
    per-token average, which removes the bias towards short answers). Ties go to the first.
    """
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    choices = list(choices)
    if not choices:
        raise KilibError("choose_by_loglik got no choices: pass at least one choice per prompt")
    if isinstance(choices[0], str):
        if not all(isinstance(c, str) for c in choices):
            raise KilibError("choices mixes strings and lists: pass one list of strings, or one list per prompt")
        per_prompt = [list(choices)] * len(prompts)
    else:
        per_prompt = [list(c) for c in choices]
        if len(per_prompt) != len(prompts):
            raise KilibError(
                f"got {len(prompts)} prompts and {len(per_prompt)} choice lists: pass one choice list per prompt"
            )
    if any(not c for c in per_prompt):
        raise KilibError("a prompt has an empty choice list: pass at least one choice per prompt")
    flat_prompts = [p for p, cs in zip(prompts, per_prompt) for _ in cs]
    flat_choices = [str(c) for cs in per_prompt for c in cs]
    scored = _continuation_logprobs(model, tokenizer, flat_prompts, flat_choices, batch_size)
    best: list[int] = []
    position = 0
    for cs in per_prompt:
        scores = [s / n if normalize else s for s, n in scored[position : position + len(cs)]]
        position += len(cs)
        best.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
    return best


def next_token_choice(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[int],
    batch_size: int = 16,
) -> list[tuple[int, list[float]]]:
    """Multiple choice by the next token (open-instruct's MMLU evaluation, which Zhong et al. use):
    per prompt, the index of the candidate token the model finds most likely right after the prompt
    (ties go to the first), and each candidate's probability under the softmax over the whole
    vocabulary, so their sum says how much of the model's next-token mass falls on the choices.

    One forward pass per prompt, where :func:`choose_by_loglik` takes one per choice. Prompts are
    tokenised as :func:`generate` tokenises them (BOS included) and right-padded, so that every
    row's last real position keeps its own position ids. Softmax in float32, eval mode,
    ``torch.inference_mode()``.
    """
    prompts, candidates = [str(p) for p in prompts], [int(c) for c in candidates]
    if not candidates or len(set(candidates)) != len(candidates):
        raise KilibError(
            f"next_token_choice needs distinct candidate token ids, got {candidates}: "
            "pick choices whose first tokens differ"
        )
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    if any(not ids for ids in encoded):
        raise KilibError("a prompt tokenises to no tokens, so nothing predicts its next token: use non-empty prompts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list[tuple[int, list[float]]] = [(0, [])] * len(encoded)
    index = torch.tensor(candidates, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, batch_size, False, "next token"):
                input_ids, attention_mask = _right_padded([encoded[i] for i in batch], pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                last = torch.tensor([len(encoded[i]) - 1 for i in batch], device=logits.device)
                probs = torch.softmax(logits[torch.arange(len(batch), device=logits.device), last].float(), dim=-1)
                chosen = probs[:, index.to(probs.device)].cpu()
                for row, i in enumerate(batch):
                    values = chosen[row].tolist()
                    out[i] = (max(range(len(values)), key=lambda k: (values[k], -k)), values)
                del logits
    finally:
        model.train(was_training)
    return out
