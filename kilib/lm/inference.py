"""Batched greedy generation and log-likelihood scoring for any Hugging Face causal LM."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Sequence

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from kilib.lm.models import WrappedLM, padding_side
from kilib.runtime import KilibError
from kilib.standin import switch

AUTO = "auto"  # batch_size="auto": sized to the GPU's free memory by fit_batch_size
DEFAULT_BATCH_SIZE = 16  # what "auto" gives where no GPU memory is measured (a model on the CPU)
MAX_AUTO_BATCH = 64  # the largest batch "auto" gives
MEMORY_FRACTION = 0.8  # the share of the GPU's free memory "auto" plans to fill
# Devices where scoring asks the output head for the scored positions only (logits_to_keep). Not
# the CPU: a matrix product over fewer rows can round differently in the last bit there (oneDNN
# picks its kernel and thread split by the row count: 1-3 rows, or 17 rows on 16 threads, differ
# from the same rows inside a larger product), so the CPU profiles' scores stay exactly those of
# the full logits, whose [batch, positions, vocabulary] tensor is small on their models. A stand-in
# run (kilib.standin.switch) slices on the CPU too: it runs the paper's path, has no committed
# numbers to keep, and its small stand-ins keep the real vocabularies (32,000-152,064 entries).
SLICED_LOGITS_DEVICES = ("cuda",)

# ----------------------------------------------------------------------------------------------
# Model helpers: generation and log-likelihood
# ----------------------------------------------------------------------------------------------


def _model_device(model):
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in (its KV cache's): ``model.dtype``, else its first floating-point parameter's."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in one row: keys and values of every layer,
    2 x layers x kv_heads x head_dim x bytes per element (grouped-query attention keeps
    ``num_key_value_heads`` heads, fewer than the query heads)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def cache_bytes_per_token(model) -> int:
    """Bytes one token of one row keeps while a batch is generated: the model's own
    ``cache_bytes_per_token()`` where it defines one (CALM's composition keeps two caches),
    else its KV cache from its config."""
    own = getattr(model, "cache_bytes_per_token", None)
    if callable(own):
        return int(own())
    return kv_bytes_per_token(model.config, model_dtype(model))


def fit_batch_size(
    model,
    requested: int,
    prompt_tokens: int,
    new_tokens: int,
    *,
    free_bytes: int | None = None,
    logit_rows: int = 1,
    cap: int = MAX_AUTO_BATCH,
    fraction: float = MEMORY_FRACTION,
) -> int:
    """The largest batch (1 to ``cap``) whose rows fit in ``fraction`` of the GPU's free memory.

    One row takes its KV cache over ``prompt_tokens + new_tokens`` positions
    (:func:`cache_bytes_per_token`) and ``logit_rows`` rows of logits over the vocabulary, in the
    model's dtype and as the float32 copy that generation and scoring take of them. ``free_bytes``
    defaults to the free memory of the model's GPU: ``torch.cuda.mem_get_info()``'s, plus what
    torch's allocator holds reserved and unused. For a model on the CPU (and no ``free_bytes``)
    ``requested`` is returned unchanged. The rest of the free memory is left to the activations
    of a forward pass; without a cache (scoring), the KV term stands for those activations,
    which it exceeds (one layer's at a time against every layer's keys and values).
    """
    if free_bytes is None:
        device = torch.device(_model_device(model))
        if device.type != "cuda":
            return requested
        free_bytes = torch.cuda.mem_get_info(device)[0]
        free_bytes += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if prompt_tokens < 1 or new_tokens < 0 or logit_rows < 0:
        raise KilibError(
            f"fit_batch_size got prompt_tokens={prompt_tokens}, new_tokens={new_tokens}, logit_rows={logit_rows}: "
            "pass the longest row's token count (at least 1) and non-negative counts"
        )
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    dtype_bytes = torch.empty((), dtype=model_dtype(model)).element_size()
    tokens = prompt_tokens + new_tokens
    per_row = row_bytes(cache_bytes_per_token(model), tokens, int(config.vocab_size), dtype_bytes, logit_rows)
    return rows_that_fit(free_bytes, per_row, cap, fraction)


def row_bytes(cache_per_token: int, tokens: int, vocab: int, dtype_bytes: int, logit_rows: int = 1) -> int:
    """Bytes one row of a batch holds while it is generated or scored: its cache over ``tokens``
    positions and ``logit_rows`` rows of logits over the vocabulary, in the model's dtype and as the
    float32 copy generation and scoring take of them."""
    return cache_per_token * tokens + logit_rows * vocab * (dtype_bytes + 4)


def rows_that_fit(free_bytes: float, per_row: int, cap: int = MAX_AUTO_BATCH, fraction: float = MEMORY_FRACTION) -> int:
    """The largest batch, 1 to ``cap``, of rows of ``per_row`` bytes in ``fraction`` of ``free_bytes``."""
    return max(1, min(int(cap), int(fraction * free_bytes) // int(per_row)))


def _resolve_batch_size(model, batch_size, shape) -> int:
    """``batch_size`` as given, or for "auto" :func:`fit_batch_size` with ``shape()``'s
    (prompt_tokens, new_tokens, logit_rows), computed only then."""
    if isinstance(batch_size, str):
        if batch_size != AUTO:
            raise KilibError(f"batch_size must be a positive integer or {AUTO!r}, got {batch_size!r}")
        prompt_tokens, new_tokens, logit_rows = shape()
        return fit_batch_size(model, DEFAULT_BATCH_SIZE, prompt_tokens, new_tokens, logit_rows=logit_rows)
    return batch_size


def _forward_takes(model, name: str) -> bool:
    """Whether ``model(..., name=...)`` reaches a forward that takes ``name``: named in its
    signature, or passed on through ``**kwargs`` by a peft wrapper (LoRA, not prompt learning,
    which shifts the positions) or a kilib :class:`~kilib.lm.models.WrappedLM` to the model it wraps."""
    seen: set[int] = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        params = inspect.signature(model.forward).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        if isinstance(model, WrappedLM):
            model = model._model
        elif isinstance(model, PeftModel) and not model.active_peft_config.is_prompt_learning:
            model = model.get_base_model()
        else:
            return False
    return False


def _slices_logits(model) -> bool:
    """Whether scoring passes ``logits_to_keep``: on a device of :data:`SLICED_LOGITS_DEVICES`,
    to a forward that takes it (:func:`_forward_takes`)."""
    device = torch.device(_model_device(model))
    sliced = device.type in SLICED_LOGITS_DEVICES or bool(switch.scale())
    return sliced and _forward_takes(model, "logits_to_keep")


def _logits_at(model, input_ids, attention_mask, keep, *, slice_logits: bool, no_cache: bool):
    """The logits at the True positions of ``keep`` [B, T], row by row: [N, V] for N True
    positions. No KV cache is built (``no_cache``: ``use_cache=False``), and with ``slice_logits``
    (:func:`_slices_logits`) the output head projects only those positions; otherwise the full
    logits are computed and indexed. The hidden states are the same either way."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if no_cache:
        kwargs["use_cache"] = False
    if slice_logits:
        kwargs["logits_to_keep"] = keep  # a 2-D bool mask: the kept positions, flattened row by row
    logits = model(**kwargs).logits
    return logits[keep.to(logits.device)] if logits.dim() == 3 else logits


def _kept_logits(model, tokenizer, rows, spans, batch_size, logit_rows: int, progress: bool, desc: str):
    """The scoring loop :func:`sequence_logprob` and :func:`next_token_choice` share: ``rows``
    (token id lists) in batches, longest first, right-padded, in eval mode under
    ``torch.inference_mode()`` and without a KV cache; yields ``(batch, logits)``, the indices of
    the batch's rows and the logits at each row's positions ``spans[i]`` (start, end), concatenated
    in batch order. ``logit_rows``: the most positions a row keeps, for ``batch_size="auto"``.
    The model's mode is restored when the loop ends or is closed."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    slice_logits, no_cache = _slices_logits(model), _forward_takes(model, "use_cache")
    longest = max(len(ids) for ids in rows)
    batch_size = _resolve_batch_size(model, batch_size, lambda: (longest, 0, logit_rows if slice_logits else longest))
    device = _model_device(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, batch_size, progress, desc):
                input_ids, attention_mask = _right_padded([rows[i] for i in batch], pad_id)
                keep = torch.zeros_like(input_ids, dtype=torch.bool)
                for row, i in enumerate(batch):
                    keep[row, spans[i][0] : spans[i][1]] = True
                logits = _logits_at(
                    model,
                    input_ids.to(device),
                    attention_mask.to(device),
                    keep.to(device),
                    slice_logits=slice_logits,
                    no_cache=no_cache,
                )
                yield batch, logits
                del logits
    finally:
        model.train(was_training)


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


class _NewTokensOverLength(logging.Filter):
    """Drops transformers' note that ``max_new_tokens`` overrides a model's ``max_length``: the
    Llama-2 models ship ``max_length`` 4,096 in their generation config, so every batch said so,
    and ``max_new_tokens`` is what :func:`generate` means."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Both `max_new_tokens`")


logging.getLogger("transformers.generation.utils").addFilter(_NewTokensOverLength())


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    batch_size: int | str = DEFAULT_BATCH_SIZE,
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
    ``batch_size="auto"`` sizes the batches to the GPU's free memory for the longest prompt and
    ``max_new_tokens`` (:func:`fit_batch_size`).

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

    batch_size = _resolve_batch_size(
        model,
        batch_size,
        lambda: (max(len(ids) for ids in tokenizer(prompts)["input_ids"]), int(max_new_tokens), 1),
    )
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
    if not pairs:
        return []
    # logits at position t predict token t + 1: a continuation of n tokens ending at position L - 1
    # is predicted at positions L - n - 1 to L - 2
    spans = [(len(ids) - n - 1, len(ids) - 1) for ids, n in pairs]
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    scored = _kept_logits(
        model,
        tokenizer,
        [ids for ids, _ in pairs],
        spans,
        batch_size,
        max(n for _, n in pairs),
        progress,
        "log-likelihood",
    )
    with contextlib.closing(scored):
        for batch, logits in scored:
            offset = 0
            for i in batch:
                ids, n_cont = pairs[i]
                step_logits = logits[offset : offset + n_cont].float()
                offset += n_cont
                targets = torch.tensor(ids[len(ids) - n_cont :], dtype=torch.long, device=step_logits.device)
                logprobs = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
                results[i] = (float(logprobs.sum()), n_cont)
    return results


def sequence_logprob(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int | str = DEFAULT_BATCH_SIZE,
) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each (prompt, continuation) pair.

    The prompt is tokenised as the tokenizer does by default (BOS included) and the
    continuation without special tokens, separately, and the ids are concatenated, so the
    boundary is exact (tokenising the joined string could merge tokens across it). Batches are
    right-padded with an attention mask; padding never enters a score. Log-softmax is taken in
    float32. The model runs in eval mode under ``torch.inference_mode()``, without a KV cache; on a
    GPU its output head projects only the positions that predict a continuation token, where its
    forward takes ``logits_to_keep`` (peft and kilib's wrappers pass it on; see
    :data:`SLICED_LOGITS_DEVICES`). ``batch_size="auto"``: see :func:`fit_batch_size`.
    """
    prompts, continuations = list(prompts), list(continuations)
    return [score for score, _ in _continuation_logprobs(model, tokenizer, prompts, continuations, batch_size)]


def choose_by_loglik(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    choices: Sequence[Sequence[str]] | Sequence[str],
    normalize: bool = False,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
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
    batch_size: int | str = DEFAULT_BATCH_SIZE,
) -> list[tuple[int, list[float]]]:
    """Multiple choice by the next token (open-instruct's MMLU evaluation, which Zhong et al. use):
    per prompt, the index of the candidate token the model finds most likely right after the prompt
    (ties go to the first), and each candidate's probability under the softmax over the whole
    vocabulary, so their sum says how much of the model's next-token mass falls on the choices.

    One forward pass per prompt, where :func:`choose_by_loglik` takes one per choice. Prompts are
    tokenised as :func:`generate` tokenises them (BOS included) and right-padded, so that every
    row's last real position keeps its own position ids. Softmax in float32, eval mode,
    ``torch.inference_mode()``, no KV cache; on a GPU the output head projects only each row's last
    position (as :func:`sequence_logprob`). ``batch_size="auto"``: see :func:`fit_batch_size`.
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
    if not encoded:
        return []
    out: list[tuple[int, list[float]]] = [(0, [])] * len(encoded)
    index = torch.tensor(candidates, dtype=torch.long)
    spans = [(len(ids) - 1, len(ids)) for ids in encoded]  # each row's last real position
    scored = _kept_logits(model, tokenizer, encoded, spans, batch_size, 1, False, "next token")
    with contextlib.closing(scored):
        for batch, logits in scored:
            probs = torch.softmax(logits.float(), dim=-1)
            chosen = probs[:, index.to(probs.device)].cpu()
            for row, i in enumerate(batch):
                values = chosen[row].tolist()
                out[i] = (max(range(len(values)), key=lambda k: (values[k], -k)), values)
    return out
