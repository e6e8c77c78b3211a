"""Training: SFT on (prompt, answer) pairs with the loss on answer tokens only, LM training
on raw documents, and one ``train`` entry point over transformers' ``Trainer``.

``Trainer`` brings gradient accumulation, schedulers, clipping, progress bars and
checkpoints that resume; ``train`` adds what the studies share: only parameters with
``requires_grad`` train (LoRA, memory modules, CALM's cross-attention), and a run resumes
from the newest checkpoint in its folder.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, TrainerCallback

from kilib.lm.models import check_trainable_4bit_layout
from kilib.results import read_json, write_json
from kilib.runtime import KilibError, cuda_available

IGNORE_INDEX = -100  # label value the cross-entropy ignores: prompt and padding tokens
AUTO_OPTIMIZER = "auto"


def training_device() -> str:
    """Where :func:`train` trains: CUDA wherever a GPU is present (``Trainer``'s choice), else the CPU."""
    return "cuda" if cuda_available() else "cpu"


def resolve_optimizer(name: str, device: str | torch.device) -> str:
    """The ``Trainer`` optimizer that ``name`` stands for on ``device``: "auto" is transformers'
    fused AdamW on CUDA ("adamw_torch_fused": one kernel per step for all parameters) and its
    foreach AdamW elsewhere ("adamw_torch", the CPU profiles' optimizer); any other name is kept."""
    if name != AUTO_OPTIMIZER:
        return name
    return "adamw_torch_fused" if torch.device(device).type == "cuda" else "adamw_torch"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every study (each study's preset fills them)."""

    epochs: float = 3.0  # Mecklenburg et al. and Zhong et al. both train 3 epochs
    batch_size: int = 1  # Mecklenburg et al.: batch size 1
    grad_accum: int = 1  # effective batch = batch_size * grad_accum
    lr: float = 2e-4  # a common QLoRA rate; Mecklenburg et al. give none
    scheduler: str = "linear"  # any transformers scheduler name: linear, cosine, constant...
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # overrides warmup_ratio when > 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # "auto" is resolved when the config is made (resolve_optimizer on training_device()): fused
    # AdamW on CUDA, "adamw_torch" on the CPU, so a CPU config and its cache keys read as before
    optimizer: str = AUTO_OPTIMIZER
    max_length: int = 512  # tokens per example; longer examples are cut
    seed: int = 0
    logging_steps: int = 10
    save_every_epoch: bool = True  # checkpoints let an interrupted run resume
    gradient_checkpointing: bool = False
    progress: bool = True
    max_steps: int = -1  # > 0 stops after that many optimiser steps (benchmarks, smoke runs)

    def __post_init__(self):
        object.__setattr__(self, "optimizer", resolve_optimizer(self.optimizer, training_device()))


# ---------------------------------------------------------------------------------------
# Prompts and SFT examples
# ---------------------------------------------------------------------------------------
def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its answer: the chat template with the assistant turn
    opened when the tokenizer has one, else the prompt itself. Evaluation uses the same
    rendering, so training and evaluation prompts agree token for token."""
    if not _has_template(tokenizer):
        return prompt
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    # Templates that write the BOS token as text would get a second one from the tokenizer.
    if tokenizer.bos_token and _adds_bos(tokenizer) and text.startswith(tokenizer.bos_token):
        text = text[len(tokenizer.bos_token) :]
    return text


def render_answer(tokenizer, prompt: str, answer: str) -> str:
    """The answer as it follows :func:`render_prompt` (template suffix and EOS included)."""
    if not _has_template(tokenizer):
        return answer + (tokenizer.eos_token or "")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    head = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(head):
        raise KilibError(
            "the tokenizer's chat template does not extend the prompt with the answer: "
            "pass a tokenizer whose template does"
        )
    tail = full[len(head) :]
    if tokenizer.eos_token and tokenizer.eos_token not in tail:
        tail += tokenizer.eos_token
    return tail


def tokenize_sft(tokenizer, prompt: str, answer: str, max_length: int = 512) -> dict[str, list[int]]:
    """Token ids and labels for one (prompt, answer) pair; prompt labels are ``-100``.

    The loss covers the answer tokens (and the template's end-of-turn), never the prompt
    (Mecklenburg et al. §3: "gradient updates only on the answer"). Where a chat template renders
    the pair, the answer is tokenised as it follows the template's text, from the tokenisation of
    prompt and answer together, whenever that starts with the prompt's own tokens: a
    SentencePiece tokenizer (Llama's) would otherwise start a separately tokenised answer with a
    word-start mark the joined text does not have ("<|assistant|>\\nAnswer" is "Answer", not
    "▁Answer"). Otherwise (no template, or where the two texts merge into one token at the
    boundary) the answer is tokenised on its own, so a plain prompt's answer starts a new word.

    Past ``max_length`` tokens the answer is kept whole (up to ``max_length - 1`` tokens) and
    the prompt loses its middle: its first half of the room left keeps the BOS token, the chat
    template's opening and a task's instruction, its second half the question and the turn
    marker before the answer.
    """
    if not str(answer).strip():
        raise KilibError(f"empty answer for prompt {prompt[:60]!r}: drop the pair or fix the data file")
    prompt_text, answer_text = render_prompt(tokenizer, prompt), render_answer(tokenizer, prompt, answer)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True).input_ids
    joined = tokenizer(prompt_text + answer_text, add_special_tokens=True).input_ids if _has_template(tokenizer) else []
    if joined[: len(prompt_ids)] == prompt_ids and len(joined) > len(prompt_ids):
        answer_ids = joined[len(prompt_ids) :]
    else:
        answer_ids = tokenizer(answer_text, add_special_tokens=False).input_ids
    if len(answer_ids) >= max_length:
        answer_ids = answer_ids[: max_length - 1]
    keep = max_length - len(answer_ids)
    if len(prompt_ids) > keep:  # cut the prompt's middle, never the answer
        head = keep // 2
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (keep - head) :]
    ids = prompt_ids + answer_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def sft_dataset(tokenizer, pairs, prompt_key: str = "prompt", answer_key: str = "answer", max_length: int = 512):
    """A ``datasets.Dataset`` of tokenised SFT examples from rows with a prompt and an answer."""
    rows = pairs.to_list() if hasattr(pairs, "to_list") else list(pairs)
    if not rows:
        raise KilibError("no (prompt, answer) pairs to train on: check the data file or the generation step")
    missing = [k for k in (prompt_key, answer_key) if k not in rows[0]]
    if missing:
        raise KilibError(f"training rows lack field(s) {', '.join(missing)}: found {', '.join(rows[0])}")
    return Dataset.from_list([tokenize_sft(tokenizer, r[prompt_key], r[answer_key], max_length) for r in rows])


def lm_dataset(tokenizer, texts: Iterable[str], block_size: int):
    """Causal-LM blocks from raw documents: each text is tokenised, EOS-terminated,
    concatenated, and cut into ``block_size`` windows (the last partial one is padded). Where
    the tokenizer starts its inputs with BOS (Llama's), each window starts with BOS too, as the
    prompts the model is later asked do."""
    stream: list[int] = []
    n = 0
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise KilibError(f"document {n} is empty or not text: remove it or fix the source file")
        stream += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        n += 1
    if n == 0:
        raise KilibError("no documents to train on: check the document folder")
    bos = tokenizer.bos_token_id
    first = [bos] if bos is not None and tokenizer("a").input_ids[:1] == [bos] else []
    width = block_size - len(first)
    rows = []
    for start in range(0, len(stream), width):
        ids = first + stream[start : start + width]
        pad = block_size - len(ids)
        rows.append(
            {
                "input_ids": ids + [tokenizer.pad_token_id] * pad,
                "attention_mask": [1] * len(ids) + [0] * pad,
                "labels": ids + [IGNORE_INDEX] * pad,
            }
        )
    return Dataset.from_list(rows)


def collator(tokenizer):
    """Right-pads ``input_ids`` and ``attention_mask``; labels are padded with ``-100``."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


class PackingCollator:
    """Packs each batch's SFT examples into as few rows as first-fit decreasing allows, each
    ``row_tokens`` long at most (or the longest example), instead of padding every example to
    the longest. Position ids restart at each example, so transformers masks attention block
    by block (an example sees only itself) and the batch's loss equals the padded batch's up to
    the order of float sums, while the padding is not computed: the zoo's reading stage pads
    35% of its token slots otherwise. Each example's first label is ignored, so no example is
    scored on predicting the next one's first token (in SFT that token is a prompt token anyway).

    ``train`` checks once that the model masks packed examples apart (:func:`check_packing`)
    and trains with ``use_cache`` off, without which transformers does not look for packing."""

    def __init__(self, tokenizer, row_tokens: int = 128):
        if tokenizer.pad_token_id is None:
            raise KilibError("the tokenizer has no pad token: set tokenizer.pad_token before packing")
        if row_tokens < 1:
            raise KilibError(f"row_tokens must be >= 1, got {row_tokens}")
        self.pad_token_id, self.row_tokens = tokenizer.pad_token_id, row_tokens

    def rows(self, lengths: Sequence[int]) -> list[list[int]]:
        """Which examples share a row (indices, in batch order), first-fit decreasing."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        width = max(self.row_tokens, max(lengths))
        rows: list[list[int]] = []
        used: list[int] = []
        for i in order:
            for r, n in enumerate(used):
                if n + lengths[i] <= width:
                    rows[r].append(i)
                    used[r] += lengths[i]
                    break
            else:
                rows.append([i])
                used.append(lengths[i])
        return sorted(sorted(r) for r in rows)

    def __call__(self, features):
        lengths = [len(f["input_ids"]) for f in features]
        packed = []
        for members in self.rows(lengths):
            ids, labels, positions = [], [], []
            for i in members:
                ids += list(features[i]["input_ids"])
                labels += [IGNORE_INDEX] + list(features[i]["labels"][1:])
                positions += range(lengths[i])
            packed.append((ids, labels, positions))
        width = max(len(ids) for ids, _, _ in packed)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for ids, labels, positions in packed:
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(positions + list(range(pad)))  # the padding is a sequence of its own
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def check_packing(model) -> None:
    """Raise unless ``model`` keeps packed examples apart: the logits of two sequences packed
    in one row (position ids restarting) must equal their logits run one by one, to within
    1e-3 of the logits' scale, or (in 16-bit compute, where kernels round differently for a
    packed row) far closer to them than the second sequence's logits when it sees the first."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, 9), generator=torch.Generator().manual_seed(0)).to(device)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = torch.cat(
                [
                    model(input_ids=ids[:, :5], use_cache=False).logits,
                    model(input_ids=ids[:, 5:], use_cache=False).logits,
                ],
                dim=1,
            ).float()
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
            joined = model(input_ids=ids, use_cache=False).logits.float()  # the second sequence sees the first
    finally:
        model.train(was_training)
    error = (packed - alone).abs().max().item()
    leak = (joined - alone)[:, 5:].abs().max().item()
    if error > 1e-3 * max(1.0, alone.abs().max().item()) and error > 0.05 * leak:
        name = type(getattr(model, "base_model", model)).__name__
        raise KilibError(
            f"{name} does not keep packed examples apart (its attention ignores restarting position ids): "
            "train it with the padding collator instead of PackingCollator"
        )


# ---------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------
def checkpointing_on(model) -> bool:
    """Whether any block of ``model`` checkpoints its activations (transformers' flag)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def enable_gradient_checkpointing(model, checkpoint_kwargs: dict | None = None) -> None:
    """Turn on non-reentrant gradient checkpointing of ``model``'s blocks, or raise: through
    transformers' ``activation_checkpointing_enable`` (peft models pass it on), else the model's
    ``gradient_checkpointing_enable`` (kilib's wrappers define one that keeps their hooks right).
    Raises where the model has neither, refuses, or has no block checkpointing afterwards."""
    kwargs = dict(checkpoint_kwargs or {})
    if kwargs.get("use_reentrant"):
        raise KilibError("kilib checkpoints gradients without reentrancy: drop use_reentrant=True")
    kwargs["use_reentrant"] = False
    name = type(model).__name__
    fix = "set gradient_checkpointing=False in its TrainConfig"
    activation = getattr(model, "activation_checkpointing_enable", None)
    gradient = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(activation) and not callable(gradient):
        raise KilibError(f"{name} cannot checkpoint gradients (it has no gradient_checkpointing_enable): {fix}")
    try:
        if callable(activation):
            activation(activation_checkpointing_kwargs=kwargs)
        else:
            gradient(gradient_checkpointing_kwargs=kwargs)
    except ValueError as e:  # transformers: the architecture does not support it
        raise KilibError(f"{name} does not support gradient checkpointing: {fix}") from e
    if not checkpointing_on(model):
        raise KilibError(f"gradient checkpointing did not come on in any block of {name}: {fix}")


@contextlib.contextmanager
def checkpointed_blocks(model):
    """``model``'s blocks checkpointed (:func:`enable_gradient_checkpointing`) for the span of
    the ``with``, in eval mode too: transformers checkpoints a block only while it is training,
    so the blocks themselves (not their sublayers: no dropout comes on) are marked training until
    the span ends. Checkpointing goes off again afterwards if it was off before."""
    was_on = checkpointing_on(model)
    if not was_on:
        enable_gradient_checkpointing(model)
    blocks = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    modes = [m.training for m in blocks]
    for m in blocks:
        m.training = True
    try:
        yield model
    finally:
        for m, mode in zip(blocks, modes):
            m.training = mode
        if not was_on:
            off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            off()


# ---------------------------------------------------------------------------------------
# The training entry point
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    steps: int
    train_loss: float
    losses: list[dict[str, float]]  # [{"step", "epoch", "loss"}], from the Trainer's log
    seconds: float


CHECKPOINT_FILES = "kilib-checkpoint.json"  # a finished checkpoint's files and their sizes, written after it


class _MarkComplete(TrainerCallback):
    """Records a checkpoint's files and sizes once ``Trainer`` has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            files = {
                p.relative_to(folder).as_posix(): p.stat().st_size
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != CHECKPOINT_FILES
            }
            write_json(folder / CHECKPOINT_FILES, files)


def checkpoint_damage(folder: Path) -> str | None:
    """What keeps ``folder`` from resuming a run, or None: no record of its files (a save that
    was cut off), or a file missing or of another size than recorded."""
    try:
        files = read_json(folder / CHECKPOINT_FILES)
    except (OSError, KilibError):
        return "it was not finished (no complete record of its files)"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, not {size:,}"
    return None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``: one that is damaged or was cut off
    (:func:`checkpoint_damage`) is said in one line and removed, and the one before it taken."""
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for folder in reversed(checkpoints):
        problem = checkpoint_damage(folder)
        if problem is None:
            return folder
        print(f"kilib: checkpoint {folder} cannot resume the run ({problem}): removing it", file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return None


class KilibTrainer(Trainer):
    """``Trainer`` with two changes. No per-step FLOP count, which walks every parameter
    of the model at each step: about 8% of a LoRA step on the tiny zoo (kilib reports no
    FLOPs). And a full model resumes through ``from_pretrained``: ``Trainer`` loads a
    checkpoint's raw state dict, which misses keys that transformers renames on loading
    (GPT-NeoX's saved ``embed_out`` is ``lm_head``), and went on with a fresh output head."""

    def floating_point_ops(self, inputs) -> int:
        return 0

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        folder = Path(resume_from_checkpoint)
        if not isinstance(model, PreTrainedModel) or not (folder / "model.safetensors").exists():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(folder, dtype=dtype)
        model.load_state_dict(saved.state_dict(), strict=True)  # a mismatch is an error, not a fresh head


def train(
    model,
    dataset,
    config: TrainConfig,
    output_dir: str | Path,
    tokenizer=None,
    data_collator=None,
    resume: bool = True,
    callbacks=None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad on ``dataset``.

    Checkpoints go to ``output_dir`` at each epoch end; with ``resume`` a rerun continues
    from the newest one. The base stays frozen wherever its parameters do not require grad.
    ``config.gradient_checkpointing`` turns it on (:func:`enable_gradient_checkpointing`) or
    raises; the optimizer is ``config.optimizer`` as :func:`resolve_optimizer` reads it.
    """
    # Re-apply torch's own thread count. A process that never called torch.set_num_threads
    # computes some backward passes in another summation order than one that did, with the same
    # count (a tiny-zoo llama-s built by a script differed from the notebook's build), so
    # without this the weights would depend on what the caller happened to do first.
    torch.set_num_threads(torch.get_num_threads())
    if len(dataset) == 0:
        raise KilibError("the training set is empty: check the data")
    check_trainable_4bit_layout(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise KilibError("no parameter requires grad: attach an adapter or a module to train first")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    output_dir = Path(output_dir)
    steps_per_epoch = math.ceil(len(dataset) / (config.batch_size * config.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_steps if config.warmup_steps > 0 else round(config.warmup_ratio * total_steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=resolve_optimizer(config.optimizer, training_device()),
        logging_steps=max(1, min(config.logging_steps, total_steps)),
        save_strategy="epoch" if config.save_every_epoch else "no",
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        use_cpu=training_device() == "cpu",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    if isinstance(data_collator, PackingCollator):
        check_packing(model)
    model_config = getattr(model, "config", None)
    use_cache = getattr(model_config, "use_cache", None)
    if use_cache:
        model_config.use_cache = False  # training needs no cache, and with one transformers does not look for packing
    trainer = KilibTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=data_collator or (collator(tokenizer) if tokenizer is not None else None),
        callbacks=[_MarkComplete(), *(callbacks or [])],
    )
    if not config.progress:  # with tqdm off, transformers prints every log line instead
        trainer.remove_callback(PrinterCallback)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        if use_cache:
            model_config.use_cache = use_cache
    losses = [
        {"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"]}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    return TrainResult(
        steps=trainer.state.global_step,
        train_loss=float(output.training_loss),
        losses=losses,
        seconds=float(output.metrics.get("train_runtime", 0.0)),
    )


def freeze_all_but(model, trainable: Sequence[str] = ()) -> None:
    """Freeze every parameter except those whose name contains one of ``trainable``
    (a memory module, CALM's cross-attention): the base stays as it was."""
    keys = tuple(trainable)
    for name, p in model.named_parameters():
        p.requires_grad = any(k in name for k in keys)
