"""Notebook 01's settings per profile: :class:`InjectionConfig` and :data:`INJECTION_PRESETS`,
and :func:`notebook_overrides`, which maps the notebook's parameters onto a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError
from kilib.sft.rules import DEFAULT_SCALES

__all__ = ["InjectionConfig", "INJECTION_PRESETS", "notebook_overrides"]


@dataclass(frozen=True)
class InjectionConfig:
    """Notebook 01's settings, one instance per profile (:data:`INJECTION_PRESETS`).

    Mecklenburg et al. §3 fix LoRA rank 16, batch size 1, 3 epochs and the loss on the answer
    tokens; they give no learning rate, no LoRA alpha and no retriever settings."""

    # What the preset runs on: the generated world and zoo of that size ("tiny", "smoke"), or
    # Hub models and data (""). Names no cache key: the zoo's models are keyed by their files.
    zoo: str = "tiny"
    model: str = "llama-m"  # a zoo member (tiny, smoke) or a Hub id / model folder (paper)
    revision: str | None = None  # pins a Hub model's commit
    quantization: str = "4bit"  # the trainee is loaded in 4-bit NF4 in every profile (QLoRA)
    corpus: str = "world"  # "world" (the tiny world), "wikipedia" or "paper" (the paper's six articles), or a folder
    documents: tuple[str, ...] = ()  # doc ids to study; empty: all (the five new documents and the control)
    sections: int = 0  # outside the tiny world: the first n sections of each document (0: all)
    generator: str = ""  # LLM that writes the Q&A outside the tiny world: a local instruct model or openai:<model>
    judge: str = ""  # LLM judge (another model family than the generator's); "" scores lexically only
    score: str = "exact"  # the score of the figures: exact (normalised match), contains, or judge
    scales: tuple[int, ...] = DEFAULT_SCALES  # the paper's 1x, 5x and 10x
    seeds: tuple[int, ...] = (0,)  # reseed LoRA and data order; the tiny world also redraws the token-based sets
    lora_r: int = 16  # Mecklenburg et al. §3
    lora_alpha: int = 16  # not given by the paper: alpha = r is a LoRA scale of 1
    # lr 3e-3 (tiny): of 3e-4, 1e-3 and 3e-3, the best mean accuracy of 10x adapters on unused
    # *train* paraphrases of two new documents (tools/sft_lr_dev.py, results/tiny/sft_lr_dev.json);
    # the evaluation questions played no part.
    train: TrainConfig = TrainConfig(
        epochs=3, batch_size=1, lr=3e-3, save_every_epoch=False, progress=False, logging_steps=10
    )
    rag_k: int = 1  # passages per RAG prompt (the zoo read one section per prompt in pretraining)
    rag_passage_words: int = 0  # 0: a passage is a section; n: long sections cut into n-word passages
    max_new_tokens: int = 16  # answers are short entities, numbers and scores
    eval_batch_size: int | str = 32  # "auto": the largest batch the GPU's free memory holds
    workers: int = 0  # adapters trained at once: 0 picks one per CPU core on a CPU, 1 on a GPU

    def __post_init__(self) -> None:
        if self.score not in ("exact", "contains", "judge"):
            raise KilibError(f"score {self.score!r} is unknown: use exact, contains or judge")
        if self.score == "judge" and not self.judge:
            raise KilibError("score 'judge' needs a judge model: set JUDGE, or score exact or contains")


INJECTION_PRESETS = {
    "tiny": InjectionConfig(zoo="tiny", seeds=(0, 1)),
    # The smoke size: the control and one new document; the tests assert on its JSON.
    "smoke": InjectionConfig(zoo="smoke", documents=("edition_2022_otrorfer_trophy", "edition_2017_monmol_cup")),
    # A Llama-2 chat model, whose knowledge stops before the five 2023 events (docs/methods.md).
    # 2e-4 is the usual QLoRA rate; the paper gives none. Epoch checkpoints let a long run resume.
    # The generator and the judge are local 4-bit instruct models of two other families (Qwen,
    # Mistral); GENERATOR="openai:<model>" uses an OpenAI-compatible endpoint instead (the paper: GPT-4).
    "paper": InjectionConfig(
        zoo="",
        model="meta-llama/Llama-2-7b-chat-hf",
        corpus="wikipedia",
        seeds=(0,),
        rag_k=3,
        rag_passage_words=150,
        generator="Qwen/Qwen2.5-7B-Instruct",
        judge="mistralai/Mistral-7B-Instruct-v0.3",
        score="judge",
        max_new_tokens=64,
        eval_batch_size="auto",
        workers=1,
        train=TrainConfig(epochs=3, batch_size=1, lr=2e-4, save_every_epoch=True, progress=True, logging_steps=20),
    ),
}

# The paper's code with its counts cut, for random-weight stand-ins of its models (make reproduce
# PROFILE=standin; kilib.standin): one new article and the control, their first sections, the
# paper's three scales and both rules, one epoch, answers of up to 16 tokens. The Q&A comes from
# kilib.standin's writer (a random model cannot follow the generation prompts); the judge is the
# Mistral stand-in.
INJECTION_PRESETS["standin"] = dataclasses.replace(
    INJECTION_PRESETS["paper"],
    documents=("2023_meridian_cricket_cup", "2018_intercontinental_football_cup"),
    sections=1,
    max_new_tokens=16,  # a random model never stops early: every answer runs to this limit
    train=dataclasses.replace(INJECTION_PRESETS["paper"].train, epochs=1, save_every_epoch=False, progress=False),
)


def notebook_overrides(
    seeds: int, model: str, documents: str, generator: str, judge: str, workers: int
) -> dict[str, Any]:
    """Notebook 01's parameters as :class:`InjectionConfig` overrides; an empty or zero value
    keeps the preset's."""
    if seeds < 0:
        raise KilibError(f"SEEDS={seeds}: use 0 to keep the profile's seeds, or n > 0 to run seeds 0 to n-1")
    if workers < 0:
        raise KilibError(f"WORKERS={workers}: use 0 for one adapter per CPU core, or n > 0 for n side by side")
    given = {
        "seeds": tuple(range(seeds)),
        "model": model,
        "corpus": documents,
        "generator": generator,
        "judge": judge,
        "workers": workers,
    }
    overrides = {k: v for k, v in given.items() if v}
    if documents:  # the presets' document ids name tiny-world documents: a folder's are its own
        overrides["documents"] = ()
    return overrides
