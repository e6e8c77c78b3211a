"""Q&A sets written by an LLM, and LLM judging: the paper profile of notebook 01 (methods.md §1).

Mecklenburg et al., "Injecting New Knowledge into Large Language Models via Supervised
Fine-Tuning" (arXiv 2404.00213), §2 has GPT-4 write the training data:

- **Token-based scaling** (§2, :func:`generate_token_based`): hand-written Q&A from the overview
  section seed the list; then, per section, the generator writes unique Q&A pairs until their
  tokens exceed 10x the section's tokens; 1x and 5x are per-section prefixes of 10x.
- **Fact-based scaling** (§2, :func:`list_atomic_facts`, :func:`generate_fact_based`): the
  generator lists the document's atomic facts, skipping broad, unclear or off-topic ones, then
  writes 10 unique Q&A pairs per fact (a duplicate question is regenerated); 1x and 5x take 1 and
  5 per fact.
- **Evaluation sets** (§2, :func:`generate_eval_sets`): 1x scale by each rule, every question
  absent from every training set of the document.
- **Judging** (methods.md §1; the paper's is not public): an LLM judge from another model
  family than the generator's (:func:`judge_answers`, :func:`check_judge_family`), always beside
  a lexical score, with their agreement (:func:`judge_agreement`).

The sets have the structure the tiny profile's rule-based sets have (:mod:`kilib.sft.study`):
a :class:`~kilib.sft.study.QASets` of pairs ``{"question", "answer", "fact_ids", "doc_id",
"section", "tokens", "origin"}``, tokens counted the same way, so training, evaluation and the
figures read either. Each generated pair also says what wrote it: ``generator``, ``revision``
and ``prompt_id`` (the prompt texts are saved beside the pairs). Token-based pairs come without
fact ids: :func:`map_pairs_to_facts` assigns them afterwards, for the coverage figure (Fig 2).

A generator is anything with ``name``, ``revision`` and ``complete(prompts) -> replies``
(:class:`Generator`): a local instruct model (:class:`LocalGenerator`) or any OpenAI-compatible
endpoint (:class:`OpenAICompatibleGenerator`: OpenAI itself, which is how to match GPT-4, or a
vLLM or Ollama server). Generated sets are expensive, so each is cached under
``<cache>/qa-sets/`` by the hash of everything that made it (document text, generator name,
revision and settings, prompt, scales, tokenizer); a cache hit loads no model.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kilib.lm.scoring import normalize_answer, token_f1
from kilib.runtime import KilibError
from kilib.sft.study import DEFAULT_SCALES, QASets, TokenCounter, check_scales, scale_token_sets

__all__ = [
    "Generator",
    "LocalGenerator",
    "OpenAICompatibleGenerator",
    "GeneratedQASets",
    "AtomicFacts",
    "TOKEN_QA_PROMPT",
    "FACTS_PROMPT",
    "FACT_QA_PROMPT",
    "JUDGE_PROMPT",
    "parse_qa_reply",
    "parse_fact_lines",
    "generate_token_based",
    "list_atomic_facts",
    "generate_fact_based",
    "generate_eval_sets",
    "map_pairs_to_facts",
    "parse_verdict",
    "JudgeVerdicts",
    "judge_answers",
    "judge_agreement",
    "family_of",
    "check_judge_family",
]

QA_CACHE = "qa-sets"
CACHE_VERSION = 1  # bump when what a cached set holds changes
MAX_AVOID = 40  # questions listed in a prompt as "already written": enough to steer, short enough to fit


# ---------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------
@runtime_checkable
class Generator(Protocol):
    """What writes Q&A pairs, lists facts and judges answers: ``name`` (a model id),
    ``revision`` (a pinned version, or None) and ``complete``, which answers each prompt as a
    single-turn chat (one reply string per prompt, in order). An optional ``settings`` dict
    (temperature, seed...) joins the cache key."""

    name: str
    revision: str | None

    def complete(self, prompts: list[str]) -> list[str]: ...


def _derived_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from ``seed`` and ``parts``: the same prompts asked the n-th time get the
    same sample in every run, whatever was asked before, so a cached set can be remade."""
    from kilib.results import stable_hash

    return int(stable_hash([seed, *parts]), 16) % 2**31


class LocalGenerator:
    """A local instruct model as generator or judge, loaded by :func:`kilib.lm.models.load_causal_lm`
    (4-bit NF4 by default; methods.md §1, "a local instruct model in 4-bit").

    Each prompt is rendered with the tokenizer's chat template as one user turn
    (:func:`kilib.lm.training.render_prompt`). With ``temperature > 0`` replies are sampled
    (``model.generate``, top-p ``top_p``) under a seed derived from ``seed``, the prompts and
    how often these prompts were asked before, so a run is reproducible and a repeated request
    (regenerating a duplicate) gets a new sample; the global random state is left as it was.
    ``temperature=0`` decodes greedily (:func:`kilib.lm.inference.generate`): use it for a judge.
    The model is loaded on the first :meth:`complete`, so a cached Q&A set loads nothing.
    """

    def __init__(
        self,
        model_id_or_path: str | Path,
        revision: str | None = None,
        quantization: str = "4bit",
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        if temperature < 0:
            raise KilibError(f"temperature must be >= 0 (0 decodes greedily), got {temperature!r}")
        if int(max_new_tokens) < 1 or int(batch_size) < 1:
            raise KilibError("max_new_tokens and batch_size must be at least 1")
        self.name = str(model_id_or_path)
        self.revision = revision
        self.quantization = quantization
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = device
        self._model = self._tokenizer = None
        self._asked: dict[str, int] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "quantization": self.quantization,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def _loaded(self):
        if self._model is None:
            from kilib.lm.models import load_causal_lm

            model, tokenizer = load_causal_lm(
                self.name, quantization=self.quantization, revision=self.revision, device=self.device
            )
            if not getattr(tokenizer, "chat_template", None):
                raise KilibError(
                    f"{self.name} has no chat template, so it cannot follow instructions: use an "
                    "instruct (chat) model as generator or judge"
                )
            self._model, self._tokenizer = model, tokenizer
        return self._model, self._tokenizer

    def complete(self, prompts: list[str]) -> list[str]:
        """One reply per prompt (the new text only, stripped)."""
        from kilib.lm.inference import generate
        from kilib.lm.training import render_prompt

        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        model, tokenizer = self._loaded()
        rendered = [render_prompt(tokenizer, p) for p in prompts]
        if self.temperature == 0:
            return [
                t.strip()
                for t in generate(
                    model, tokenizer, rendered, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
                )
            ]
        from kilib.results import stable_hash

        key = stable_hash(prompts)
        occurrence = self._asked.get(key, 0)
        self._asked[key] = occurrence + 1
        return self._sample(model, tokenizer, rendered, _derived_seed(self.seed, key, occurrence))

    def close(self) -> None:
        """Free the model (and its GPU memory) before the next stage loads another."""
        import gc

        import torch

        self._model = self._tokenizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sample(self, model, tokenizer, rendered: list[str], seed: int) -> list[str]:
        import copy

        import torch

        from kilib.lm.models import padding_side

        config = copy.deepcopy(model.generation_config)
        config.do_sample = True
        config.temperature = self.temperature
        config.top_p = self.top_p
        config.top_k = 0  # top-p alone decides which tokens may be drawn
        config.num_beams = 1
        config.num_return_sequences = 1
        config.max_length = None
        config.max_new_tokens = self.max_new_tokens
        config.pad_token_id = tokenizer.pad_token_id
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        config.eos_token_id = eos or None
        device = getattr(model, "device", None) or next(model.parameters()).device
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        replies: list[str] = []
        with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode(), padding_side(tokenizer, "left"):
            torch.manual_seed(seed)
            for start in range(0, len(rendered), self.batch_size):
                encoded = tokenizer(rendered[start : start + self.batch_size], return_tensors="pt", padding=True)
                encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
                output = model.generate(**encoded, generation_config=config)
                new = output[:, encoded["input_ids"].shape[1] :]
                replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        return replies


class OpenAICompatibleGenerator:
    """Any OpenAI-compatible chat endpoint as generator or judge, through the official
    ``openai`` client: OpenAI itself (``base_url=None``; how to match the paper's GPT-4), or a
    vLLM, Ollama or other server (``base_url="http://host:8000/v1"``).

    The key is read from the environment variable ``api_key_env`` on the first request (a
    cached set needs none); a local server accepts any non-empty value. ``revision`` names a
    pinned model version where the endpoint has one (OpenAI's dated model ids are better
    still). Requests go ``workers`` at a time; replies come back in prompt order. ``seed``
    is sent with each request (derived per prompt and repeat, as :class:`LocalGenerator`
    does); endpoints treat it as best effort.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.7,
        max_tokens: int = 1024,
        seed: int | None = 0,
        revision: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 8,
        workers: int = 4,
    ) -> None:
        if not str(model).strip():
            raise KilibError("an empty model name was given: pass the endpoint's model id, e.g. 'gpt-4-0613'")
        if int(workers) < 1:
            raise KilibError(f"workers must be at least 1, got {workers!r}")
        self.name = str(model)
        self.revision = revision
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.workers = int(workers)
        self._client = None
        self._asked: dict[str, int] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "backend": "openai-compatible",
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    @property
    def _where(self) -> str:
        return self.base_url or "the OpenAI API"

    def _connected(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise KilibError(
                    f"{self.api_key_env} is not set: export {self.api_key_env}=<your API key> (a local vLLM "
                    f"or Ollama server accepts any value), or pass api_key_env= the variable that holds it"
                )
            self._client = openai.OpenAI(
                api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries
            )
        return self._client

    def complete(self, prompts: list[str]) -> list[str]:
        """One reply per prompt (the message content, stripped)."""
        from concurrent.futures import ThreadPoolExecutor

        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        client = self._connected()
        seeds = []
        for prompt in prompts:
            occurrence = self._asked.get(prompt, 0)
            self._asked[prompt] = occurrence + 1
            seeds.append(None if self.seed is None else _derived_seed(self.seed, prompt, occurrence))
        if self.workers == 1 or len(prompts) == 1:
            return [self._one(client, p, s) for p, s in zip(prompts, seeds)]
        with ThreadPoolExecutor(min(self.workers, len(prompts))) as pool:
            return list(pool.map(lambda ps: self._one(client, *ps), zip(prompts, seeds)))

    def _one(self, client, prompt: str, seed: int | None) -> str:
        import openai

        extra = {} if seed is None else {"seed": seed}
        try:
            response = client.chat.completions.create(
                model=self.name,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                **extra,
            )
        except openai.AuthenticationError:
            raise KilibError(f"{self._where} rejected the API key in {self.api_key_env}: check the key") from None
        except openai.RateLimitError:
            raise KilibError(
                f"{self._where} kept answering 429 (rate limit) after {self.max_retries} retries: lower "
                "workers, raise max_retries, or wait; finished sets are cached"
            ) from None
        except openai.NotFoundError:
            raise KilibError(
                f"{self._where} does not serve model {self.name!r}: check the model name "
                "(the endpoint's /models lists what it serves)"
            ) from None
        except openai.APIConnectionError as e:
            raise KilibError(
                f"cannot reach {self._where} ({type(e).__name__}): start the server, check base_url, "
                "or check the network"
            ) from None
        except openai.APIStatusError as e:
            message = " ".join(str(getattr(e, "message", e)).split())[:200]
            raise KilibError(
                f"{self._where} answered HTTP {e.status_code} for model {self.name!r} ({message}): "
                "fix the request settings or try again later"
            ) from None
        if not response.choices:
            raise KilibError(f"{self._where} returned no choice for model {self.name!r}: check the endpoint")
        return (response.choices[0].message.content or "").strip()


OPENAI_PREFIX = "openai:"


def make_generator(spec: str, *, temperature: float = 0.7, seed: int = 0, max_new_tokens: int = 1024):
    """A generator (or judge) from one string: ``"openai:<model>"`` is any OpenAI-compatible
    endpoint (``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` from the environment, as the ``openai``
    client reads them; how to match the paper's GPT-4), anything else a local instruct model
    (Hub id or folder) in 4-bit."""
    spec = str(spec).strip()
    if not spec:
        raise KilibError("no generator named: pass a local instruct model (Hub id or folder) or openai:<model>")
    if spec.startswith(OPENAI_PREFIX):
        model = spec[len(OPENAI_PREFIX) :].strip()
        if not model:
            raise KilibError(f"{spec!r} names no model: write openai:<model>, e.g. openai:gpt-4-0613")
        return OpenAICompatibleGenerator(
            model,
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            temperature=temperature,
            seed=seed,
            max_tokens=max_new_tokens,
        )
    return LocalGenerator(spec, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)


def _check_generator(generator: Any) -> None:
    if not (
        isinstance(getattr(generator, "name", None), str)
        and callable(getattr(generator, "complete", None))
        and hasattr(generator, "revision")
    ):
        raise KilibError(
            f"{type(generator).__name__} is not a generator: pass a LocalGenerator, an "
            "OpenAICompatibleGenerator, or an object with name, revision and complete(prompts)"
        )


def _identity(generator: Any) -> dict[str, Any]:
    return {"name": generator.name, "revision": generator.revision, "settings": getattr(generator, "settings", None)}


def _ask(generator: Any, prompts: list[str]) -> list[str]:
    replies = list(generator.complete(list(prompts)))
    if len(replies) != len(prompts):
        raise KilibError(
            f"generator {generator.name!r} returned {len(replies)} replies to {len(prompts)} prompts: "
            "complete() must answer every prompt, in order"
        )
    return [str(r) if r is not None else "" for r in replies]


# ---------------------------------------------------------------------------------------
# Prompts and parsing replies
# ---------------------------------------------------------------------------------------
TOKEN_QA_PROMPT = """Below is one section of an encyclopedia article.

Article: {title}
Section: {section}
---
{text}
---

Write {n} question-answer pairs that test knowledge of the facts stated in this section.
- Every question must be answerable from the section alone, and must name what it asks about in full (the article's subject by name, never "the event" or "this tournament").
- Every answer is short: a name, a number, a date or a phrase from the section.
- Every question must be new: do not repeat or rephrase a question listed below.
{avoid}
Reply with one JSON object per line and nothing else, in this form:
{{"question": "...", "answer": "..."}}"""

FACTS_PROMPT = """Below is one section of an encyclopedia article.

Article: {title}
Section: {section}
---
{text}
---

List the atomic facts this section states. An atomic fact is one short, specific, checkable statement (who, what, when, where, how many) that names its subject in full, so that it can be understood without the section.
If a statement is too broad, unclear, an opinion, or not about {title}, write it on a line that starts with "SKIP:" instead.
Reply with one fact per line, without numbering, without any other text."""

FACT_QA_PROMPT = """Article: {title}
Fact: {fact}

Write {n} different question-answer pairs that each ask for this fact. Vary the wording, but every question must be answerable from the fact alone and must name what it asks about in full. Every answer is short and taken from the fact.
{avoid}
Reply with one JSON object per line and nothing else, in this form:
{{"question": "...", "answer": "..."}}"""

JUDGE_PROMPT = """You are grading an answer to a quiz question.

Question: {question}
Expected answer: {expected}
Candidate answer: {candidate}

The candidate answer is correct if it states the expected answer, in any wording. It is wrong if it gives another answer, leaves the expected answer out, or hedges between several answers.
Reply with exactly one line: "Correct: yes" or "Correct: no"."""


def _prompt_id(name: str, template: str) -> str:
    """``name-<hash of the template>``: names the prompt a pair came from (prompts.json holds its text)."""
    from kilib.results import stable_hash

    return f"{name}-{stable_hash(template, 8)}"


def _avoid_block(questions: Sequence[str]) -> str:
    recent = list(questions)[-MAX_AVOID:]
    if not recent:
        return ""
    return "Questions already written (do not repeat them):\n" + "\n".join(f"- {q}" for q in recent) + "\n"


def _render(template: str, **fields: Any) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise KilibError(
            f"the prompt template does not format ({type(e).__name__}: {e}): use the fields "
            f"{', '.join('{' + f + '}' for f in fields)} and double literal braces ({{{{ }}}})"
        ) from None


_FENCE_LINE = re.compile(r"^\s*```")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def parse_qa_reply(reply: str) -> tuple[list[tuple[str, str]], int]:
    """``(question, answer)`` pairs from a reply of JSON lines, and the number of malformed lines.

    A line counts where it holds one JSON object with non-empty ``question`` and ``answer``
    (a list or bullet marker before it and text around the braces are tolerated); a reply that
    is one JSON array of such objects is read too. Blank lines and code fences are ignored; any
    other line is malformed and skipped."""
    text = str(reply or "").strip()
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    candidates: list[Any]
    malformed = 0
    if isinstance(whole, list):
        candidates = whole
    else:
        candidates = []
        for line in text.splitlines():
            if not line.strip() or _FENCE_LINE.match(line):
                continue
            line = _BULLET.sub("", line).strip().rstrip(",")
            start, end = line.find("{"), line.rfind("}")
            try:
                candidates.append(json.loads(line[start : end + 1]) if 0 <= start < end else None)
            except ValueError:
                candidates.append(None)
    pairs = []
    for item in candidates:
        if isinstance(item, dict):
            question, answer = item.get("question"), item.get("answer")
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
                pairs.append((" ".join(question.split()), " ".join(answer.split())))
                continue
        malformed += 1
    return pairs, malformed


_SKIP = re.compile(r"^\s*\W*skip\W*:\s*", re.IGNORECASE)


def parse_fact_lines(reply: str) -> tuple[list[str], list[str], int]:
    """``(facts, skipped, malformed)`` from a fact-listing reply (:data:`FACTS_PROMPT`): one
    fact per line, list markers removed; lines starting with ``SKIP:`` are the facts the
    generator judged too broad, unclear or off-topic (Mecklenburg et al. §2 skips them); a
    line ending in ``:`` (a preamble such as "Here are the facts:") is malformed."""
    facts, skipped, malformed = [], [], 0
    for line in str(reply or "").splitlines():
        if not line.strip() or _FENCE_LINE.match(line):
            continue
        line = " ".join(_BULLET.sub("", line).split())
        if _SKIP.match(line):
            skipped.append(_SKIP.sub("", line))
        elif line.endswith(":") or not normalize_answer(line):
            malformed += 1
        else:
            facts.append(line)
    return facts, skipped, malformed


# ---------------------------------------------------------------------------------------
# Sets and their cache
# ---------------------------------------------------------------------------------------
class GeneratedQASets(QASets):
    """A :class:`~kilib.sft.study.QASets` written by an LLM, with ``report``: how the
    generation went (requests, rounds, malformed lines, duplicate questions dropped, facts
    skipped), for the notebook to show beside the sets."""

    def __init__(self, data: Mapping[Any, list[dict]], *, report: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(data, **kw)
        self.report = dict(report or {})


class AtomicFacts(list):
    """A document's atomic facts, ``{"fact_id", "doc_id", "title", "section", "text",
    "generator", "revision", "prompt_id"}`` in the order the sections state them, plus
    ``skipped`` (``{"section", "text"}`` the generator marked too broad, unclear or off-topic)
    and ``report`` (requests, malformed lines, duplicates dropped)."""

    def __init__(
        self,
        facts: Iterable[Mapping[str, Any]] = (),
        skipped: Iterable[Mapping[str, Any]] = (),
        report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(dict(f) for f in facts)
        self.skipped = [dict(s) for s in skipped]
        self.report = dict(report or {})


def _write_lines(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    from kilib.results import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _save_sets(folder: Path, sets: GeneratedQASets, prompts: Mapping[str, str]) -> None:
    from kilib.results import write_json

    keys = list(sets)
    for key in keys:
        _write_lines(folder / f"pairs-{key}.jsonl", sets[key])
    write_json(folder / "prompts.json", prompts)
    write_json(
        folder / "sets.json",
        {
            "rule": sets.rule,
            "doc_id": sets.doc_id,
            "keys": keys,
            "section_tokens": sets.section_tokens,
            "shortfalls": [[k, v] for k, v in sets.shortfalls.items()],
            "short_facts": [[k, v] for k, v in sets.short_facts.items()],
            "report": sets.report,
        },
    )


def _load_sets(folder: Path) -> GeneratedQASets:
    from kilib.results import read_json

    meta = read_json(folder / "sets.json")
    data = {key: _read_lines(folder / f"pairs-{key}.jsonl") for key in meta["keys"]}
    return GeneratedQASets(
        data,
        rule=meta["rule"],
        doc_id=meta["doc_id"],
        section_tokens=meta["section_tokens"],
        shortfalls={k: v for k, v in meta["shortfalls"]},
        short_facts={k: v for k, v in meta["short_facts"]},
        report=meta["report"],
    )


def _cached_sets(
    key: Mapping[str, Any], make: Callable[[], GeneratedQASets], prompts: Mapping[str, str], cache: bool
) -> GeneratedQASets:
    """``make()``'s sets, built once per ``key`` under ``<cache>/qa-sets/`` (pairs as JSONL,
    one file per scale or eval kind; the prompts beside them), or made afresh without ``cache``."""
    if not cache:
        return make()
    from kilib.results import cached_dir

    folder = cached_dir(QA_CACHE, {"version": CACHE_VERSION, **key}, lambda f: _save_sets(f, make(), prompts))
    return _load_sets(folder)


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any] | None:
    if tokenizer is None:
        return None
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return {"name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__), "size": size}


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
_SECTION_FIELDS = ("doc_id", "title", "section", "text")
_FACT_FIELDS = ("fact_id", "doc_id", "section", "text")


def _document_rows(sections_rows: Iterable[Mapping[str, Any]], doc_id: str | None) -> tuple[str, list[dict]]:
    """One document's section rows (``doc_id`` picks it where the rows hold several)."""
    rows = [dict(r) for r in sections_rows]
    for i, row in enumerate(rows):
        missing = [f for f in _SECTION_FIELDS if f not in row]
        if missing:
            raise KilibError(
                f"section row {i} lacks {', '.join(missing)}: pass rows of kilib.lm.documents or World.documents()"
            )
    ids = list(dict.fromkeys(r["doc_id"] for r in rows))
    if doc_id is None:
        if len(ids) != 1:
            raise KilibError(
                f"the section rows hold {len(ids)} documents ({', '.join(ids[:6]) or 'none'}): pass doc_id= to pick one"
            )
        doc_id = ids[0]
    rows = [r for r in rows if r["doc_id"] == doc_id]
    if not rows:
        raise KilibError(f"no section of document {doc_id!r}: choose one of {', '.join(ids) or '(no rows given)'}")
    names = [r["section"] for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KilibError(
            f"document {doc_id!r} repeats section name {repeated[0]!r}: clean the rows with "
            "kilib.lm.documents.clean_sections, which makes names unique"
        )
    return doc_id, rows


def _document_facts(facts: Iterable[Mapping[str, Any]]) -> tuple[str, list[dict]]:
    facts = [dict(f) for f in facts]
    if not facts:
        raise KilibError("no facts given: list them first with list_atomic_facts(generator, rows)")
    for i, fact in enumerate(facts):
        missing = [f for f in _FACT_FIELDS if f not in fact]
        if missing:
            raise KilibError(f"fact {i} lacks {', '.join(missing)}: pass the facts list_atomic_facts returns")
    ids = list(dict.fromkeys(f["doc_id"] for f in facts))
    if len(ids) != 1:
        raise KilibError(f"the facts belong to {len(ids)} documents ({', '.join(ids[:6])}): pass one document's facts")
    fact_ids = [f["fact_id"] for f in facts]
    if len(set(fact_ids)) != len(fact_ids):
        raise KilibError("fact ids repeat: give every fact its own fact_id")
    return ids[0], facts


def _pair(
    question: str,
    answer: str,
    *,
    doc_id: str,
    section: str,
    fact_ids: list[str],
    count,
    origin: str,
    generator: Any,
    prompt_id: str | None,
) -> dict:
    return {
        "question": question,
        "answer": answer,
        "fact_ids": list(fact_ids),
        "doc_id": doc_id,
        "section": section,
        "tokens": None if count is None else count(question) + count(answer),
        "origin": origin,
        "generator": None if generator is None else generator.name,
        "revision": None if generator is None else generator.revision,
        "prompt_id": prompt_id,
    }


# ---------------------------------------------------------------------------------------
# The generation loops
# ---------------------------------------------------------------------------------------
def _section_pairs(
    generator,
    rows: list[dict],
    count,
    budgets: Mapping[str, int],
    used: set[str],
    prior: Mapping[str, list[str]],
    template: str,
    prompt_id: str,
    pairs_per_request: int,
    max_rounds: int,
    report: dict,
) -> dict[str, list[dict]]:
    """Per section, rounds of requests for ``pairs_per_request`` new pairs until the kept pairs'
    tokens first exceed the section's budget, or ``max_rounds`` requests were made. One request
    per unfinished section per round, sent together; replies are read in section order. A pair
    whose normalised question is in ``used`` (the document's questions so far, and whatever
    must be avoided) is dropped; every kept question joins ``used``."""
    drawn: dict[str, list[dict]] = {r["section"]: [] for r in rows}
    tokens = dict.fromkeys(drawn, 0)
    rounds = dict.fromkeys(drawn, 0)
    open_rows = list(rows)
    while open_rows:
        prompts = []
        for r in open_rows:
            asked = list(prior.get(r["section"], [])) + [p["question"] for p in drawn[r["section"]]]
            prompts.append(
                _render(
                    template,
                    title=r["title"],
                    section=r["section"],
                    text=r["text"],
                    n=pairs_per_request,
                    avoid=_avoid_block(asked),
                )
            )
        replies = _ask(generator, prompts)
        report["requests"] += len(prompts)
        for row, reply in zip(open_rows, replies):
            name = row["section"]
            rounds[name] += 1
            pairs, malformed = parse_qa_reply(reply)
            report["malformed_lines"] += malformed
            for question, answer in pairs:
                if tokens[name] > budgets[name]:
                    break
                key = normalize_answer(question)
                if not key or key in used:
                    report["duplicate_questions"] += 1
                    continue
                used.add(key)
                pair = _pair(
                    question,
                    answer,
                    doc_id=row["doc_id"],
                    section=name,
                    fact_ids=[],
                    count=count,
                    origin="generated",
                    generator=generator,
                    prompt_id=prompt_id,
                )
                drawn[name].append(pair)
                tokens[name] += pair["tokens"]
        open_rows = [
            r for r in open_rows if tokens[r["section"]] <= budgets[r["section"]] and rounds[r["section"]] < max_rounds
        ]
    report["rounds"] = {**report.get("rounds", {}), **rounds}
    return drawn


def _fact_pairs(
    generator,
    facts: list[dict],
    per_fact: int,
    count,
    used: set[str],
    prior: Mapping[str, list[str]],
    template: str,
    prompt_id: str,
    max_rounds: int,
    report: dict,
) -> tuple[dict[str, list[dict]], list[str]]:
    """Per fact, requests for the pairs still missing until it has ``per_fact`` unique ones, or
    ``max_rounds`` requests were made (then it is skipped). Duplicates as in :func:`_section_pairs`."""
    got: dict[str, list[dict]] = {f["fact_id"]: [] for f in facts}
    rounds = dict.fromkeys(got, 0)
    open_facts = list(facts)
    while open_facts:
        prompts = []
        for f in open_facts:
            asked = list(prior.get(f["fact_id"], [])) + [p["question"] for p in got[f["fact_id"]]]
            prompts.append(
                _render(
                    template,
                    title=f.get("title") or f["doc_id"],
                    fact=f["text"],
                    n=per_fact - len(got[f["fact_id"]]),
                    avoid=_avoid_block(asked),
                )
            )
        replies = _ask(generator, prompts)
        report["requests"] += len(prompts)
        for fact, reply in zip(open_facts, replies):
            fid = fact["fact_id"]
            rounds[fid] += 1
            pairs, malformed = parse_qa_reply(reply)
            report["malformed_lines"] += malformed
            for question, answer in pairs:
                if len(got[fid]) == per_fact:
                    break
                key = normalize_answer(question)
                if not key or key in used:
                    report["duplicate_questions"] += 1
                    continue
                used.add(key)
                got[fid].append(
                    _pair(
                        question,
                        answer,
                        doc_id=fact["doc_id"],
                        section=fact["section"],
                        fact_ids=[fid],
                        count=count,
                        origin="generated",
                        generator=generator,
                        prompt_id=prompt_id,
                    )
                )
        open_facts = [f for f in open_facts if len(got[f["fact_id"]]) < per_fact and rounds[f["fact_id"]] < max_rounds]
    report["regenerations"] = report.get("regenerations", 0) + sum(r - 1 for r in rounds.values())
    skipped = [fid for fid, pairs in got.items() if len(pairs) < per_fact]
    return {fid: pairs for fid, pairs in got.items() if len(pairs) == per_fact}, skipped


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KilibError(f"{name} must be a positive integer, got {value!r}")
    return value


def _new_report() -> dict[str, Any]:
    return {"requests": 0, "malformed_lines": 0, "duplicate_questions": 0}


def generate_token_based(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    tokenizer,
    scales: Sequence[int] = DEFAULT_SCALES,
    overview_pairs: Iterable[Mapping[str, Any]] = (),
    *,
    doc_id: str | None = None,
    max_rounds: int = 100,
    pairs_per_request: int = 10,
    prompt: str = TOKEN_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """Token-based scaling by an LLM, Mecklenburg et al. §2 ("Token-based scaling").

    ``overview_pairs`` (hand-written Q&A about the overview section, ``{"question", "answer"}``)
    open every scale and sit outside every budget, as in the tiny profile. Then, for each
    section with T its token count under ``tokenizer`` (question and answer each encoded alone,
    no special tokens, as :mod:`kilib.sft.study` counts): the generator is asked for
    ``pairs_per_request`` pairs at a time (JSON lines, :data:`TOKEN_QA_PROMPT`, the section's
    latest questions listed to avoid); malformed lines are skipped and a question whose
    normalised form (:func:`kilib.lm.scoring.normalize_answer`) the document already has is
    dropped; requests repeat until the kept pairs' tokens first exceed ``max(scales) * T``.
    Scale s takes each section's pairs in order until their tokens first exceed ``s * T``, so
    1x ⊂ 5x ⊂ 10x per section. A section still under budget after ``max_rounds`` requests is
    recorded in ``.shortfalls``. ``fact_ids`` stay empty (:func:`map_pairs_to_facts` fills them).

    ``sections_rows``: rows of :mod:`kilib.lm.documents` (``doc_id`` picks one document where they
    hold several). Cached by document text, generator, prompt, scales and tokenizer.
    Returns a :class:`GeneratedQASets`, rule ``"token"``: scale -> pairs, seeds first.
    """
    from kilib.results import stable_hash

    _check_generator(generator)
    scales = check_scales(scales)
    _positive_int("max_rounds", max_rounds)
    _positive_int("pairs_per_request", pairs_per_request)
    doc_id, rows = _document_rows(sections_rows, doc_id)
    count = TokenCounter(tokenizer)
    t_of = {r["section"]: count(r["text"]) for r in rows}
    overview = next((r["section"] for r in rows if r["section"] == "Overview"), rows[0]["section"])
    seeds = [dict(p) for p in overview_pairs]
    for i, seed in enumerate(seeds):
        if not str(seed.get("question", "")).strip() or not str(seed.get("answer", "")).strip():
            raise KilibError(f"overview pair {i} needs a non-empty question and answer")
    prompt_id = _prompt_id("token_qa", prompt)
    key = {
        "kind": "token",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "section_tokens": t_of,
        "seeds": stable_hash(seeds),
        "generator": _identity(generator),
        "prompt": prompt,
        "scales": scales,
        "max_rounds": max_rounds,
        "pairs_per_request": pairs_per_request,
        "tokenizer": _tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        head, used = [], set()
        for seed in seeds:
            question, answer = " ".join(str(seed["question"]).split()), " ".join(str(seed["answer"]).split())
            norm = normalize_answer(question)
            if norm in used:
                raise KilibError(
                    f"overview pair question {question!r} repeats another: make the hand-written questions unique"
                )
            used.add(norm)
            head.append(
                _pair(
                    question,
                    answer,
                    doc_id=doc_id,
                    section=seed.get("section") or overview,
                    fact_ids=list(seed.get("fact_ids") or []),
                    count=count,
                    origin="overview_seed",
                    generator=None,
                    prompt_id=None,
                )
            )
        report = _new_report()
        budgets = {name: max(scales) * t for name, t in t_of.items()}
        drawn = _section_pairs(
            generator, rows, count, budgets, used, {}, prompt, prompt_id, pairs_per_request, max_rounds, report
        )
        sets, shortfalls = scale_token_sets(drawn, t_of, scales, head)
        if not sets[max(scales)]:
            raise KilibError(
                f"the generator {generator.name!r} wrote no usable Q&A pair for {doc_id!r}: check its "
                "replies (they must be JSON lines with question and answer)"
            )
        report["pairs"] = {name: len(pairs) for name, pairs in drawn.items()}
        return GeneratedQASets(
            sets, rule="token", doc_id=doc_id, section_tokens=t_of, shortfalls=shortfalls, report=report
        )

    return _cached_sets(key, make, {prompt_id: prompt}, cache)


def list_atomic_facts(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    *,
    doc_id: str | None = None,
    prompt: str = FACTS_PROMPT,
    cache: bool = True,
) -> AtomicFacts:
    """A document's atomic facts, Mecklenburg et al. §2 ("Fact-based scaling": the generator
    lists the document's atomic facts; too broad, unclear or off-topic ones are skipped).

    One request per section (:data:`FACTS_PROMPT`): one fact per line, the vague or off-topic
    ones marked ``SKIP:`` by the generator and kept apart in ``.skipped``. Facts are deduplicated
    across the document by their normalised text and numbered in the order the sections state
    them (``<doc_id>.fact000``...). Cached as ``facts.jsonl`` (with the prompt beside it) by
    document text, generator and prompt.
    """
    from kilib.results import cached_dir, read_json, stable_hash, write_json

    _check_generator(generator)
    doc_id, rows = _document_rows(sections_rows, doc_id)
    prompt_id = _prompt_id("atomic_facts", prompt)

    def make() -> AtomicFacts:
        replies = _ask(
            generator, [_render(prompt, title=r["title"], section=r["section"], text=r["text"]) for r in rows]
        )
        report = {"requests": len(rows), "malformed_lines": 0, "duplicate_facts": 0}
        facts, skipped, seen = [], [], set()
        for row, reply in zip(rows, replies):
            listed, marked, malformed = parse_fact_lines(reply)
            report["malformed_lines"] += malformed
            skipped += [{"section": row["section"], "text": t} for t in marked]
            for text in listed:
                norm = normalize_answer(text)
                if norm in seen:
                    report["duplicate_facts"] += 1
                    continue
                seen.add(norm)
                facts.append(
                    {
                        "fact_id": f"{doc_id}.fact{len(facts):03d}",
                        "doc_id": doc_id,
                        "title": row["title"],
                        "section": row["section"],
                        "text": text,
                        "generator": generator.name,
                        "revision": generator.revision,
                        "prompt_id": prompt_id,
                    }
                )
        if not facts:
            raise KilibError(
                f"the generator {generator.name!r} listed no atomic fact for {doc_id!r}: check its replies "
                "(one fact per line)"
            )
        return AtomicFacts(facts, skipped, report)

    if not cache:
        return make()

    def build(folder: Path) -> None:
        facts = make()
        _write_lines(folder / "facts.jsonl", facts)
        write_json(folder / "prompts.json", {prompt_id: prompt})
        write_json(folder / "facts.json", {"skipped": facts.skipped, "report": facts.report})

    key = {
        "version": CACHE_VERSION,
        "kind": "facts",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "generator": _identity(generator),
        "prompt": prompt,
    }
    folder = cached_dir(QA_CACHE, key, build)
    meta = read_json(folder / "facts.json")
    return AtomicFacts(_read_lines(folder / "facts.jsonl"), meta["skipped"], meta["report"])


def generate_fact_based(
    generator: Generator,
    facts: Iterable[Mapping[str, Any]],
    per_fact: int = 10,
    scales: Sequence[int] = DEFAULT_SCALES,
    *,
    tokenizer=None,
    max_rounds: int = 5,
    prompt: str = FACT_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """Fact-based scaling by an LLM, Mecklenburg et al. §2 ("Fact-based scaling").

    For every fact (one document's, from :func:`list_atomic_facts`), the generator is asked for
    ``per_fact`` Q&A pairs (:data:`FACT_QA_PROMPT`); a malformed line or a question the
    document already has (normalised) is dropped and the missing pairs are asked for again,
    up to ``max_rounds`` requests per fact. A fact that still has fewer than ``per_fact``
    unique pairs is skipped entirely (``.report["skipped_facts"]``), so every scale covers the
    same facts evenly. Scale s is the first s pairs of every kept fact: 1x ⊂ 5x ⊂ 10x.
    ``tokenizer`` is optional: with one, ``tokens`` is counted; without, it is None.

    Returns a :class:`GeneratedQASets`, rule ``"fact"``: scale -> pairs, facts in order.
    """
    from kilib.results import stable_hash

    _check_generator(generator)
    scales = check_scales(scales)
    _positive_int("per_fact", per_fact)
    _positive_int("max_rounds", max_rounds)
    if per_fact < max(scales):
        raise KilibError(f"per_fact must be at least the largest scale ({max(scales)}), got {per_fact}")
    doc_id, facts = _document_facts(facts)
    count = TokenCounter(tokenizer) if tokenizer is not None else None
    prompt_id = _prompt_id("fact_qa", prompt)
    key = {
        "kind": "fact",
        "doc_id": doc_id,
        "facts": stable_hash([{k: f[k] for k in _FACT_FIELDS} for f in facts]),
        "generator": _identity(generator),
        "prompt": prompt,
        "per_fact": per_fact,
        "scales": scales,
        "max_rounds": max_rounds,
        "tokenizer": _tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        report = _new_report()
        kept, skipped = _fact_pairs(generator, facts, per_fact, count, set(), {}, prompt, prompt_id, max_rounds, report)
        if not kept:
            raise KilibError(
                f"no fact of {doc_id!r} got {per_fact} unique Q&A pairs in {max_rounds} requests: raise "
                "max_rounds, or check the generator's replies"
            )
        report["skipped_facts"] = skipped
        report["kept_facts"] = list(kept)
        sets = {s: [p for pairs in kept.values() for p in pairs[:s]] for s in scales}
        return GeneratedQASets(sets, rule="fact", doc_id=doc_id, short_facts={s: [] for s in scales}, report=report)

    return _cached_sets(key, make, {prompt_id: prompt}, cache)


def generate_eval_sets(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    tokenizer,
    facts: Iterable[Mapping[str, Any]],
    training_sets: Iterable[Mapping[Any, list[dict]]],
    *,
    doc_id: str | None = None,
    max_rounds: int = 20,
    pairs_per_request: int = 10,
    token_prompt: str = TOKEN_QA_PROMPT,
    fact_prompt: str = FACT_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """The two evaluation sets, Mecklenburg et al. §2 (1x scale; questions unique and absent
    from training): ``"token"``, per section, pairs until their tokens exceed 1x T, as
    :func:`generate_token_based` writes them; ``"fact"``, one pair per fact, as
    :func:`generate_fact_based` writes them. No question of either is, once normalised, a
    question of any set in ``training_sets`` (pass both rules' training sets: Fig 4 asks the
    fact-based eval questions of the token-trained models), nor of the other eval set; the
    section's (or fact's) training questions are listed in the prompt to steer the generator
    away, and a repeat is dropped and regenerated. Where a fact-based training set is among
    ``training_sets``, only the facts it kept are asked about, so Fig 3 scores trained facts.

    Returns a :class:`GeneratedQASets`, rule ``"eval"``, keys ``"token"`` and ``"fact"``;
    ``.shortfalls["token"]`` and ``.short_facts["fact"]`` (facts with no new question) record
    what ran out.
    """
    from kilib.results import stable_hash

    _check_generator(generator)
    _positive_int("max_rounds", max_rounds)
    _positive_int("pairs_per_request", pairs_per_request)
    doc_id, rows = _document_rows(sections_rows, doc_id)
    fact_doc, facts = _document_facts(facts)
    if fact_doc != doc_id:
        raise KilibError(f"the facts are about {fact_doc!r} and the sections about {doc_id!r}: pass one document's")
    training_sets = list(training_sets)
    training = [pair for sets in training_sets for pairs in sets.values() for pair in pairs]
    if not training:
        raise KilibError("no training pairs given: pass the document's token- and fact-based training sets")
    fact_sets = [sets for sets in training_sets if getattr(sets, "rule", None) == "fact"]
    if fact_sets:
        kept = {fid for sets in fact_sets for pair in sets.get(max(sets)) for fid in pair["fact_ids"]}
        facts = [f for f in facts if f["fact_id"] in kept]
        if not facts:
            raise KilibError("no fact has pairs in the fact-based training set: pass the facts it was generated from")
    count = TokenCounter(tokenizer)
    t_of = {r["section"]: count(r["text"]) for r in rows}
    token_id, fact_id = _prompt_id("token_qa", token_prompt), _prompt_id("fact_qa", fact_prompt)
    key = {
        "kind": "eval",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "section_tokens": t_of,
        "facts": stable_hash([{k: f[k] for k in _FACT_FIELDS} for f in facts]),
        "training_questions": stable_hash(sorted({normalize_answer(p["question"]) for p in training})),
        "generator": _identity(generator),
        "prompts": [token_prompt, fact_prompt],
        "max_rounds": max_rounds,
        "pairs_per_request": pairs_per_request,
        "tokenizer": _tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        used = {normalize_answer(p["question"]) for p in training}
        by_section: dict[str, list[str]] = {}
        by_fact: dict[str, list[str]] = {}
        for pair in training:
            by_section.setdefault(pair.get("section"), []).append(pair["question"])
            for fid in pair.get("fact_ids") or []:
                by_fact.setdefault(fid, []).append(pair["question"])
        report = _new_report()
        drawn = _section_pairs(
            generator,
            rows,
            count,
            t_of,
            used,
            by_section,
            token_prompt,
            token_id,
            pairs_per_request,
            max_rounds,
            report,
        )
        token_sets, shortfalls = scale_token_sets(drawn, t_of, (1,), [])
        per_fact, short = _fact_pairs(
            generator, facts, 1, count, used, by_fact, fact_prompt, fact_id, max_rounds, report
        )
        data = {"token": token_sets[1], "fact": [p for pairs in per_fact.values() for p in pairs]}
        empty = [name for name, pairs in data.items() if not pairs]
        if empty:  # nothing to score: better said here than as missing bars hours later
            raise KilibError(
                f"the {' and '.join(empty)} evaluation set of {doc_id!r} came out empty (every reply "
                "repeated a training question or was malformed): raise max_rounds or use another generator"
            )
        return GeneratedQASets(
            data,
            rule="eval",
            doc_id=doc_id,
            section_tokens=t_of,
            shortfalls={"token": shortfalls[1]},
            short_facts={"fact": short},
            report=report,
        )

    return _cached_sets(key, make, {token_id: token_prompt, fact_id: fact_prompt}, cache)


# ---------------------------------------------------------------------------------------
# Which fact a pair asks about (Fig 2)
# ---------------------------------------------------------------------------------------
def map_pairs_to_facts(
    pairs: Iterable[Mapping[str, Any]], facts: Iterable[Mapping[str, Any]], min_f1: float = 0.3
) -> list[dict]:
    """Copies of ``pairs`` with ``fact_ids`` set to the one fact each asks about, for the
    coverage figure (Mecklenburg et al. Fig 2: how many token-based pairs touch each fact).

    The rule is lexical: the fact of the pair's document whose statement has the highest SQuAD
    token F1 (:func:`kilib.lm.scoring.token_f1`, on normalised words) with the pair's question
    and answer joined, provided that F1 is at least ``min_f1``; ties go to the fact listed
    first, and a pair below ``min_f1`` for every fact gets no fact (``[]``). A pair restates
    its fact in other words, so shared names, numbers and dates carry the match; 0.3 keeps
    the pairs that share the fact's key words and drops those about something the fact list
    left out. It is a heuristic: report it as one."""
    if not 0.0 <= float(min_f1) <= 1.0:
        raise KilibError(f"min_f1 must lie in [0, 1], got {min_f1!r}")
    facts = [dict(f) for f in facts]
    for i, fact in enumerate(facts):
        if "fact_id" not in fact or "text" not in fact:
            raise KilibError(f"fact {i} lacks fact_id or text: pass the facts list_atomic_facts returns")
    out = []
    for pair in pairs:
        pair = dict(pair)
        text = f"{pair['question']} {pair['answer']}"
        candidates = [f for f in facts if pair.get("doc_id") is None or f.get("doc_id") in (None, pair.get("doc_id"))]
        best, best_f1 = None, -1.0
        for fact in candidates:
            f1 = token_f1(text, fact["text"])
            if f1 > best_f1:
                best, best_f1 = fact, f1
        pair["fact_ids"] = [best["fact_id"]] if best is not None and best_f1 >= float(min_f1) else []
        out.append(pair)
    return out


# ---------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------
_VERDICT = re.compile(r"\bcorrect\b\s*\**\s*[:=\-]?\s*\**\s*(yes|no)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """The judge's verdict: True for "Correct: yes", False for "Correct: no" (any case, bold
    or not); a reply that is only "yes" or "no" counts too. None where there is no verdict or
    the reply gives both."""
    found = {m.group(1).lower() for m in _VERDICT.finditer(str(reply or ""))}
    if len(found) == 1:
        return found.pop() == "yes"
    if not found:
        bare = normalize_answer(reply or "")
        if bare in ("yes", "no"):
            return bare == "yes"
    return None


class JudgeVerdicts(list):
    """The judge's verdicts (True, False, or None where a reply had none), with ``replies``
    (the raw replies) and ``unparseable`` (how many are None)."""

    def __init__(self, verdicts: Iterable[bool | None], replies: Iterable[str]) -> None:
        super().__init__(verdicts)
        self.replies = list(replies)
        self.unparseable = sum(v is None for v in self)


def judge_answers(
    judge: Generator,
    items: Iterable[Mapping[str, Any]],
    *,
    qa_generator: Generator | str | None = None,
    allow_same_family: bool = False,
    prompt: str = JUDGE_PROMPT,
) -> JudgeVerdicts:
    """LLM judging, methods.md §1 ("Judging"; the paper's judge is not public): for each item
    ``{"question", "expected", "candidate"}`` the judge reads :data:`JUDGE_PROMPT` and replies
    "Correct: yes" or "Correct: no" (:func:`parse_verdict`; an unparseable reply is None and
    counted in ``.unparseable``). Use a judge with ``temperature=0``. With ``qa_generator``
    (the model that wrote the Q&A), :func:`check_judge_family` first makes sure the two come
    from different model families. Report a lexical score beside the verdicts
    (:func:`judge_agreement`)."""
    _check_generator(judge)
    if qa_generator is not None:
        check_judge_family(judge, qa_generator, allow_same_family=allow_same_family)
    items = [dict(i) for i in items]
    for i, item in enumerate(items):
        missing = [k for k in ("question", "expected", "candidate") if k not in item]
        if missing:
            raise KilibError(
                f"judge item {i} lacks {', '.join(missing)}: pass dicts with question, expected, candidate"
            )
    prompts = [_render(prompt, question=i["question"], expected=i["expected"], candidate=i["candidate"]) for i in items]
    replies = _ask(judge, prompts) if prompts else []
    return JudgeVerdicts([parse_verdict(r) for r in replies], replies)


def judge_agreement(judge: Sequence[bool | None], lexical: Sequence[bool | float]) -> dict[str, float | int]:
    """How often the judge and a lexical score agree, and Cohen's kappa (agreement beyond what
    the two marginal rates give by chance), over the items the judge gave a verdict on.

    ``lexical`` holds booleans or scores; a score counts as correct at >= 0.5 (containment and
    exact match are 0 or 1). kappa = (p_o - p_e) / (1 - p_e) with p_o the observed agreement and
    p_e = p_judge(yes) p_lexical(yes) + p_judge(no) p_lexical(no); it is NaN where p_e = 1
    (both always say the same one thing). Returns ``{"agreement", "n", "cohen_kappa"}``."""
    judge, lexical = list(judge), list(lexical)
    if len(judge) != len(lexical):
        raise KilibError(
            f"{len(judge)} judge verdicts against {len(lexical)} lexical scores: pass one of each per answer"
        )
    both = [(bool(j), float(x) >= 0.5) for j, x in zip(judge, lexical) if j is not None]
    n = len(both)
    if n == 0:
        raise KilibError("the judge gave no parseable verdict: check its replies (JudgeVerdicts.replies)")
    observed = sum(j == x for j, x in both) / n
    judge_yes = sum(j for j, _ in both) / n
    lexical_yes = sum(x for _, x in both) / n
    chance = judge_yes * lexical_yes + (1 - judge_yes) * (1 - lexical_yes)
    kappa = float("nan") if chance == 1 else (observed - chance) / (1 - chance)
    return {"agreement": observed, "n": n, "cohen_kappa": kappa}


# The model family a model id belongs to, by the first pattern that matches its lower-cased id;
# a fine-tune keeps its base's family ("deepseek-r1-distill-llama" is a Llama). Order matters.
MODEL_FAMILIES = (
    ("gpt_neox", r"pythia|gpt-?neox|neox"),
    ("mistral", r"mistral|mixtral|ministral|codestral"),
    ("llama", r"llama|vicuna|alpaca"),
    ("qwen", r"qwen|qwq"),
    ("gemma", r"gemma"),
    ("phi", r"(?<![a-z])phi"),
    ("gpt", r"(?<![a-z])gpt|chatgpt|(?<![a-z0-9])o[1-9](?:-|$)"),
    ("claude", r"claude"),
    ("deepseek", r"deepseek"),
    ("falcon", r"falcon"),
    ("olmo", r"olmo"),
    ("command", r"command-r|c4ai"),
    ("granite", r"granite"),
    ("yi", r"(?<![a-z])yi-"),
)


def family_of(name: str) -> str | None:
    """The model family of a model id or path (``"meta-llama/Llama-2-7b-chat-hf"`` -> ``"llama"``,
    ``"gpt-4-0613"`` -> ``"gpt"``), by name patterns (:data:`MODEL_FAMILIES`); None if none
    matches. A heuristic on the name only: a renamed fine-tune escapes it."""
    lowered = str(name).lower().rstrip("/").rsplit("/", 2)
    text = "/".join(lowered[-2:])  # the Hub id, or a folder and its parent
    for family, pattern in MODEL_FAMILIES:
        if re.search(pattern, text):
            return family
    return None


def check_judge_family(
    judge: Generator | str, generator: Generator | str, *, allow_same_family: bool = False
) -> tuple[str | None, str | None]:
    """Make sure the judge comes from another model family than the Q&A generator (methods.md
    §1: a judge that shares the generator's family may favour its phrasing). Returns both
    families; a :class:`KilibError` where they are the same, unless ``allow_same_family``
    (then report it as a deviation); a warning where a family cannot be told from the name."""
    judge_name = judge if isinstance(judge, str) else judge.name
    generator_name = generator if isinstance(generator, str) else generator.name
    judge_family, generator_family = family_of(judge_name), family_of(generator_name)
    if judge_family is None or generator_family is None:
        unknown = judge_name if judge_family is None else generator_name
        warnings.warn(
            f"cannot tell the model family of {unknown!r} from its name: check by hand that the judge "
            "and the generator come from different families",
            stacklevel=2,
        )
    elif judge_family == generator_family and not allow_same_family:
        raise KilibError(
            f"the judge {judge_name!r} and the generator {generator_name!r} are both {judge_family} models: "
            "pick a judge from another family, or pass allow_same_family=True and report it"
        )
    return judge_family, generator_family
