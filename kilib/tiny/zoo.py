"""The tiny profile's models: a tokenizer trained on the generated world and a zoo of small
Llama and GPT-NeoX (Pythia-like) models pretrained on its pre-cutoff part.

Everything is built once and cached under ``.cache/`` by a hash of what made it (world
seed and size, tokenizer and model configs, pretraining recipe), saved with
``save_pretrained`` and loaded back through :func:`kilib.lm.models.load_causal_lm`, the same
4-bit path the paper profile uses for Hub models (docs/tiny-world.md, "A zoo of small models").
What the models read is made in :mod:`kilib.tiny.corpus`; what they know is measured in
:mod:`kilib.tiny.knowledge` and cached here by :func:`knowledge_report`.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from kilib.lm.data import FEVER_LABELS, fever_prompt
from kilib.lm.models import progress_bars
from kilib.lm.training import (
    IGNORE_INDEX,
    PackingCollator,
    TrainConfig,
    lm_dataset,
    sft_dataset,
    train,
)
from kilib.results import cache_path, cached_dir, read_json, stable_hash, write_json
from kilib.runtime import KilibError, set_seed
from kilib.tiny.corpus import chat_example as chat_example  # re-exported for the tools
from kilib.tiny.corpus import closed_book_examples, pretraining_texts, reading_examples
from kilib.tiny.corpus import pretraining_claims as pretraining_claims  # re-exported for the studies
from kilib.tiny.knowledge import answer_accuracy as answer_accuracy  # re-exported for the tools
from kilib.tiny.knowledge import majority_answers as majority_answers  # re-exported for the tests
from kilib.tiny.knowledge import measure_knowledge
from kilib.tiny.world import WORLD_SIZES, generate_world

RECIPE_VERSION = 2  # bump when the corpus recipe changes, so cached zoos are rebuilt

SPECIAL_TOKENS = ("<|pad|>", "<|eos|>", "<|unk|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    """One zoo member: architecture and shape (built from config, never downloaded)."""

    name: str
    family: str  # "llama" | "gpt_neox"
    hidden: int
    layers: int
    heads: int
    ffn: int


@dataclass(frozen=True)
class ReadingStage:
    """A short SFT stage after pretraining, with the loss on answer tokens only, that teaches
    the zoo to answer from a passage in its context (what the RAG baseline needs).

    Reading examples about pre-cutoff facts teach nothing: the model answers them from memory.
    So the passages here describe editions that exist in no version of the world: their facts
    come from freshly generated worlds, with every team, player, city, venue and country
    renamed to one of this world's (:func:`reading_examples`). The answer is a name the model
    knows, the edition is one it cannot know, and no memorised fact is contradicted, so only
    reading the passage lowers the loss. Closed-book Q&A on pre-cutoff facts (train
    paraphrases) is mixed in so that reading does not displace what the model knows.

    With ``known_series`` > 0, that share of the fresh worlds also take this world's series
    names (and each series' own teams and players): passages about editions of a series the
    model has memorised other editions of, as the post-cutoff questions are, so that reading
    learns to win over memory."""

    reading_examples: int = 0  # passage-in-context Q&A about non-existent editions; 0 = no stage
    closed_book_examples: int = 0  # replayed pre-cutoff Q&A, train paraphrases
    train: TrainConfig = TrainConfig()
    known_series: float = 0.0  # share of the fresh worlds renamed onto this world's series
    # Each batch's examples packed into rows of this many tokens (PackingCollator): the same
    # loss as padding them, without computing the 35% of padding; 0 pads instead.
    pack_tokens: int = 128
    # Only the reader goes through it: 01's RAG baseline runs on llama-m. The smaller models keep
    # what pretraining alone gave them, with one recipe for all, so the zoo's sizes compare
    # fairly, and 02's student learns nothing from the stage's replay; NeoX serves 04's FEVER
    # study, which never puts a passage in the prompt. The stage costs as much as pretraining.
    models: tuple[str, ...] = ("llama-m",)


@dataclass(frozen=True)
class ZooConfig:
    """What the zoo is made of; its hash keys the cache."""

    world_size: str = "tiny"
    world_seed: int = 0
    vocab_size: int = 1024  # the world's text is small and regular: 1k BPE tokens cover it
    block_size: int = 256  # packed pretraining sequence length (articles are shorter)
    qa_per_fact: int = 6  # train-split paraphrases of each pre-cutoff fact seen in pretraining
    rc_per_fact: int = 0  # reading-comprehension examples on pre-cutoff facts (section in context) per fact
    claims_per_page: int = 3
    arithmetic_examples: int = 1500
    models: tuple[ModelSpec, ...] = ()
    train: TrainConfig = TrainConfig()
    reading: ReadingStage = ReadingStage()

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        unknown = [n for n in self.reading.models if n not in names]
        if self.models and self.reading.reading_examples > 0 and unknown:
            raise KilibError(
                f"the reading stage names no zoo model {', '.join(map(repr, unknown))}: choose among {', '.join(names)}"
            )


# Llama for the SFT, transfer and CALM studies; GPT-NeoX as Pythia for the memory study's
# sweep across sizes. Sizes are a few hundred thousand to a few million parameters so the
# whole zoo pretrains in minutes on two CPU cores. Every width is a multiple of 64, the block
# size of bitsandbytes' 4-bit CPU kernels.
LLAMA_S = ModelSpec("llama-s", "llama", hidden=128, layers=4, heads=4, ffn=384)
LLAMA_M = ModelSpec("llama-m", "llama", hidden=192, layers=6, heads=6, ffn=512)
NEOX_XS = ModelSpec("neox-xs", "gpt_neox", hidden=64, layers=2, heads=4, ffn=256)
NEOX_S = ModelSpec("neox-s", "gpt_neox", hidden=128, layers=2, heads=4, ffn=512)
# neox-m was 128 wide (1.06M) and tied neox-s; 192 wide it spreads the sizes (0.23M, 0.66M,
# 2.17M) and scored higher on the development measure (results/tiny/zoo_size_dev.jsonl).
NEOX_M = ModelSpec("neox-m", "gpt_neox", hidden=192, layers=4, heads=6, ffn=768)

ZOO_PRESETS = {
    "tiny": ZooConfig(
        world_size="tiny",
        # Reading examples about pre-cutoff facts taught no reading (answered from memory), so
        # reading is taught by the stage below instead, on editions no world holds.
        rc_per_fact=0,
        models=(LLAMA_S, LLAMA_M, NEOX_XS, NEOX_S, NEOX_M),
        # 16 epochs: on llama-m under recipe version 1, 8 epochs reached 27% on held-out
        # pre-cutoff paraphrases, 16 reached 49% and 30 reached 55% (results/tiny/
        # zoo_recipe_sweep.json); 16 is the time trade-off.
        train=TrainConfig(
            epochs=16.0,
            batch_size=16,
            lr=3e-3,
            scheduler="cosine",
            warmup_ratio=0.05,
            weight_decay=0.01,
            max_grad_norm=1.0,
            logging_steps=50,
            save_every_epoch=True,
            progress=False,
        ),
        # On llama-m (results/tiny/zoo_reading_dev.jsonl): 3,000 reading examples left reading at 10% on a
        # development world, 6,000 at 13%, 12,000 at 41% and 14,000 at 47%, the skill appearing
        # late; lr 1e-3 kept more closed-book knowledge than 2e-3 and 3e-3. Renaming half the
        # fresh worlds onto this world's series raised reading on a known-series development set
        # from 0.50 (mean of 3 seeds) to 0.55 (2 seeds) and lowered it on fresh series from 0.55
        # to 0.52; all of them (1 seed) gave 0.58 and 0.43. Half is the balance.
        reading=ReadingStage(
            reading_examples=20000,
            closed_book_examples=10000,
            known_series=0.5,
            train=TrainConfig(
                epochs=1,
                batch_size=16,
                lr=1e-3,
                scheduler="cosine",
                warmup_ratio=0.05,
                weight_decay=0.01,
                max_grad_norm=1.0,
                logging_steps=20,
                save_every_epoch=False,
                progress=False,
            ),
        ),
    ),
    "smoke": ZooConfig(
        world_size="smoke",
        vocab_size=512,
        block_size=128,
        qa_per_fact=2,
        rc_per_fact=0,
        claims_per_page=1,
        arithmetic_examples=200,
        models=(
            ModelSpec("llama-s", "llama", hidden=64, layers=1, heads=2, ffn=128),
            ModelSpec("llama-m", "llama", hidden=64, layers=2, heads=4, ffn=192),
            ModelSpec("neox-xs", "gpt_neox", hidden=64, layers=1, heads=2, ffn=128),
            ModelSpec("neox-s", "gpt_neox", hidden=64, layers=2, heads=4, ffn=128),
            ModelSpec("neox-m", "gpt_neox", hidden=64, layers=3, heads=4, ffn=256),
        ),
        train=TrainConfig(
            epochs=6,
            batch_size=16,
            lr=3e-3,
            scheduler="cosine",
            warmup_ratio=0.05,
            weight_decay=0.01,
            logging_steps=5,
            save_every_epoch=False,
            progress=False,
        ),
        # Six epochs leave the smoke models answering almost nothing closed-book (the tiny zoo
        # needs 16 epochs of a larger model for that). The stage's closed-book replay, with every
        # train paraphrase of each fact and a higher rate, is what makes the smoke reader know the
        # pre-cutoff world: held-out paraphrases rose from 1% to 40% (baseline 20%) for about 5 s more.
        reading=ReadingStage(
            reading_examples=300,
            closed_book_examples=5000,
            known_series=0.5,
            train=TrainConfig(
                epochs=1,
                batch_size=16,
                lr=5e-3,
                scheduler="cosine",
                warmup_ratio=0.05,
                weight_decay=0.01,
                logging_steps=5,
                save_every_epoch=False,
                progress=False,
            ),
        ),
    ),
}


def zoo_config(profile: str) -> ZooConfig:
    """The zoo for a profile: ``smoke`` for tests, ``tiny`` otherwise (the paper profile uses
    Hub models; notebook 00 shows the tiny zoo whatever the profile)."""
    return ZOO_PRESETS["smoke" if profile == "smoke" else "tiny"]


def world_of(config: ZooConfig):
    return generate_world(seed=config.world_seed, size=config.world_size)


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------
def tokenizer_texts(world) -> list[str]:
    """Every text a tiny model may read: all articles (post-cutoff too, since notebook 01
    trains on them), questions, claims, tasks, digits."""
    texts = [a.text for a in world.articles.values()]
    for fact_id in sorted(world.facts):
        texts += world.questions(fact_id, "train")[:2] + world.questions(fact_id, "eval")[:1]
    texts += list(world.claims(per_page=1)["claim"])
    texts.append(fever_prompt("x", [("y", label) for label in FEVER_LABELS]))
    texts += [" ".join(str(i) for i in range(100)), "+ - x = ( ) , . ?"]
    return texts


def build_tokenizer(world, vocab_size: int, folder: Path):
    """Train a byte-level BPE on the world's text (digits split one by one, which keeps
    arithmetic learnable) and save it as a standard ``PreTrainedTokenizerFast``."""

    tok = Tokenizer(tokenizer_models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_texts(world), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    fast.save_pretrained(folder)
    return fast


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def model_config(spec: ModelSpec, tokenizer, block_size: int):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.ffn,
        max_position_embeddings=4 * block_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    if spec.family == "llama":
        return LlamaConfig(num_key_value_heads=spec.heads, **common)
    if spec.family == "gpt_neox":
        return GPTNeoXConfig(use_parallel_residual=True, rotary_pct=0.25, **common)
    raise KilibError(f"unknown model family {spec.family!r}: use llama or gpt_neox")


def _world_key(config: ZooConfig) -> dict[str, Any]:
    return {
        "seed": config.world_seed,
        "size": config.world_size,
        "size_fields": dataclasses.asdict(WORLD_SIZES[config.world_size]),
    }


def _tokenizer_key(config: ZooConfig) -> dict[str, Any]:
    return {"kind": "tokenizer", "recipe": RECIPE_VERSION, "world": _world_key(config), "vocab_size": config.vocab_size}


def tokenizer_dir(config: ZooConfig) -> Path:
    return cached_dir(
        "tokenizer", _tokenizer_key(config), lambda tmp: build_tokenizer(world_of(config), config.vocab_size, tmp)
    )


def _spec(config: ZooConfig, name: str) -> ModelSpec:
    spec = next((m for m in config.models if m.name == name), None)
    if spec is None:
        raise KilibError(f"no zoo model {name!r}: choose one of {', '.join(m.name for m in config.models)}")
    return spec


def pretrained_dir(config: ZooConfig, name: str) -> Path:
    """Zoo member ``name`` after pretraining, before the reading stage: built on first use,
    cached afterwards (a crashed build resumes from its last epoch)."""
    spec = _spec(config, name)
    tok_dir = tokenizer_dir(config)
    return cached_dir(
        "zoo", _pretrained_key(config, spec), lambda tmp: _pretrain(config, spec, tok_dir, tmp), resumable=True
    )


def model_dir(config: ZooConfig, name: str) -> Path:
    """The zoo member ``name`` as the studies use it: pretrained, then through the reading
    stage when the config sends it through one. Built on first use, cached afterwards."""
    base = pretrained_dir(config, name)
    if not _reads(config, name):
        return base
    return cached_dir("zoo", _reader_key(config, base.name), lambda tmp: _read_stage(config, base, tmp), resumable=True)


def _reads(config: ZooConfig, name: str) -> bool:
    return config.reading.reading_examples > 0 and name in config.reading.models


def _pretrained_key(config: ZooConfig, spec: ModelSpec) -> dict[str, Any]:
    return {
        "kind": "zoo-model",
        "recipe": RECIPE_VERSION,
        "world": _world_key(config),
        "tokenizer": stable_hash(_tokenizer_key(config)),  # the tokenizer folder's name
        "spec": dataclasses.asdict(spec),
        "corpus": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in ("models", "train", "reading", "world_size", "world_seed")
        },
        "train": dataclasses.asdict(config.train),
    }


def _reader_key(config: ZooConfig, pretrained_name: str) -> dict[str, Any]:
    return {
        "kind": "zoo-reader",
        "recipe": RECIPE_VERSION,
        "pretrained": pretrained_name,
        "reading": {k: v for k, v in dataclasses.asdict(config.reading).items() if k != "models"},
    }


def zoo_entries(config: ZooConfig) -> list[tuple[str, str, Path]]:
    """Every cache folder the zoo consists of, as (what it is, cache kind, where it lies or will
    lie), without building any: the tokenizer, each model after pretraining, and each model
    after its reading stage. A folder is built when ``key.json`` is in it."""
    entries = [("tokenizer", "tokenizer", cache_path("tokenizer", _tokenizer_key(config)))]
    for spec in config.models:
        base = cache_path("zoo", _pretrained_key(config, spec))
        entries.append((f"{spec.name} pretrained", "zoo", base))
        if _reads(config, spec.name):
            entries.append((f"{spec.name} + reading stage", "zoo", cache_path("zoo", _reader_key(config, base.name))))
    return entries


def _pretrain(config: ZooConfig, spec: ModelSpec, tok_dir: Path, folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    world = world_of(config)
    texts = pretraining_texts(world, tokenizer, config, seed=config.train.seed)
    dataset = lm_dataset(tokenizer, texts, config.block_size)
    set_seed(config.train.seed)
    model = AutoModelForCausalLM.from_config(model_config(spec, tokenizer, config.block_size), dtype=torch.float32)
    with progress_bars(config.train.progress):
        result = train(model, dataset, config.train, folder / "checkpoints", tokenizer=tokenizer)
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(
        folder / "pretraining.json",
        {
            "model": spec.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "non_embedding_parameters": sum(
                p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n
            ),
            "corpus_documents": len(texts),
            "corpus_tokens": int(sum(sum(r) for r in dataset["attention_mask"])),
            "steps": result.steps,
            "train_loss": result.train_loss,
            "losses": result.losses,
            "seconds": result.seconds,
            "torch_threads": torch.get_num_threads(),
        },
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def _read_stage(config: ZooConfig, base: Path, folder: Path) -> None:
    stage = config.reading
    tokenizer = AutoTokenizer.from_pretrained(base)
    world = world_of(config)
    rows = reading_examples(
        world, stage.reading_examples, seed=stage.train.seed, known_series=stage.known_series
    ) + closed_book_examples(world, stage.closed_book_examples, seed=stage.train.seed)
    random.Random(stage.train.seed).shuffle(rows)
    dataset = sft_dataset(tokenizer, rows, max_length=config.block_size)
    set_seed(stage.train.seed)
    with progress_bars(stage.train.progress):
        model = AutoModelForCausalLM.from_pretrained(base)
        packer = PackingCollator(tokenizer, stage.pack_tokens) if stage.pack_tokens > 0 else None
        result = train(model, dataset, stage.train, folder / "checkpoints", tokenizer=tokenizer, data_collator=packer)
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log = read_json(base / "pretraining.json")
    log["reading_stage"] = {
        "examples": len(rows),
        "reading_examples": stage.reading_examples,
        "closed_book_examples": stage.closed_book_examples,
        "answer_tokens": int(sum(sum(t != IGNORE_INDEX for t in r) for r in dataset["labels"])),
        "tokens": int(sum(len(r) for r in dataset["input_ids"])),
        "steps": result.steps,
        "train_loss": result.train_loss,
        "losses": result.losses,
        "seconds": result.seconds,
    }
    write_json(folder / "pretraining.json", log)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def pretraining_log(config: ZooConfig, name: str) -> dict[str, Any]:
    """Pretraining (and reading-stage) log of zoo member ``name``."""
    return read_json(model_dir(config, name) / "pretraining.json")


# ---------------------------------------------------------------------------------------
# What the zoo knows
# ---------------------------------------------------------------------------------------
def knowledge_report(config: ZooConfig, name: str, per_fact: int = 1, pretrained_only: bool = False) -> dict[str, Any]:
    """What zoo member ``name`` knows, each with a bootstrap interval (docs/tiny-world.md checks):
    closed-book accuracy on held-out paraphrases of pre-cutoff facts (beside the
    most-common-answer baseline, the chance level), on the control document, on the
    post-cutoff documents (beside the same baseline), and on
    post-cutoff questions with the right section in context (what RAG needs).
    ``pretrained_only`` measures the model before its reading stage (one recipe for all).

    Cached by the model's hash and the question count: a rerun recomputes nothing."""
    folder = pretrained_dir(config, name) if pretrained_only else model_dir(config, name)
    # version 3: answers computed in float32 (models.keep_trainable_4bit_layout), not by bitsandbytes' bf16 CPU kernel
    key = {"kind": "knowledge-report", "version": 3, "model": folder.name, "per_fact": per_fact}
    report = cached_dir(
        "reports", key, lambda tmp: write_json(tmp / "report.json", _knowledge(config, name, folder, per_fact))
    )
    return read_json(report / "report.json")


def _knowledge(config: ZooConfig, name: str, folder: Path, per_fact: int) -> dict[str, Any]:
    return measure_knowledge(world_of(config), name, folder, per_fact)
