"""Instruct LLMs as text generators: what writes Q&A pairs, lists facts and judges answers.

Any study may use this layer. A generator is anything with ``name``, ``revision`` and
``complete(prompts) -> replies`` (:class:`Generator`): a local instruct model
(:class:`LocalGenerator`) or any OpenAI-compatible endpoint (:class:`OpenAICompatibleGenerator`:
OpenAI itself, or a vLLM or Ollama server); :func:`make_generator` builds either from one string.
:func:`family_of` tells a model's family from its name (a judge should come from another family
than the generator whose text it grades; docs/methods.md, "## 01 SFT knowledge injection").
"""

from __future__ import annotations

import copy
import gc
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from kilib.lm.inference import AUTO, fit_batch_size, generate
from kilib.lm.models import load_causal_lm, padding_side
from kilib.lm.training import render_prompt
from kilib.results import stable_hash
from kilib.runtime import KilibError

CPU_BATCH = 8  # a local generator's batch where no GPU memory is measured

__all__ = [
    "Generator",
    "LocalGenerator",
    "OpenAICompatibleGenerator",
    "OPENAI_PREFIX",
    "make_generator",
    "check_generator",
    "ask",
    "fill_prompt",
    "MODEL_FAMILIES",
    "family_of",
]


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
    return int(stable_hash([seed, *parts]), 16) % 2**31


class LocalGenerator:
    """A local instruct model as generator or judge, loaded by :func:`kilib.lm.models.load_causal_lm`
    (4-bit NF4 by default; docs/methods.md, "## 01 SFT knowledge injection": "a local instruct model in 4-bit").

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
        batch_size: int | str = AUTO,
        device: str | None = None,
    ) -> None:
        if temperature < 0:
            raise KilibError(f"temperature must be >= 0 (0 decodes greedily), got {temperature!r}")
        if int(max_new_tokens) < 1 or (batch_size != AUTO and int(batch_size) < 1):
            raise KilibError(f'max_new_tokens and batch_size must be at least 1 (or batch_size "{AUTO}")')
        self.name = str(model_id_or_path)
        self.revision = revision
        self.quantization = quantization
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.batch_size = batch_size if batch_size == AUTO else int(batch_size)
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
        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        model, tokenizer = self._loaded()
        rendered = [render_prompt(tokenizer, p) for p in prompts]
        if self.temperature == 0:
            return [
                t.strip()
                for t in generate(
                    model,
                    tokenizer,
                    rendered,
                    max_new_tokens=self.max_new_tokens,
                    batch_size=self._batch(model, rendered),
                )
            ]
        key = stable_hash(prompts)
        occurrence = self._asked.get(key, 0)
        self._asked[key] = occurrence + 1
        return self._sample(model, tokenizer, rendered, _derived_seed(self.seed, key, occurrence))

    def _batch(self, model, rendered: list[str]) -> int:
        """The batch size: as given, or for "auto" the largest whose KV caches fit the GPU's free
        memory (:func:`kilib.lm.inference.fit_batch_size`; 8 on the CPU)."""
        if self.batch_size != AUTO:
            return int(self.batch_size)
        longest = max(len(ids) for ids in self._tokenizer(rendered)["input_ids"])
        return fit_batch_size(model, CPU_BATCH, longest, self.max_new_tokens)

    def close(self) -> None:
        """Free the model (and its GPU memory) before the next stage loads another."""
        self._model = self._tokenizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sample(self, model, tokenizer, rendered: list[str], seed: int) -> list[str]:
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
            batch = self._batch(model, rendered)
            for start in range(0, len(rendered), batch):
                encoded = tokenizer(rendered[start : start + batch], return_tensors="pt", padding=True)
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


def check_generator(generator: Any) -> None:
    """A clear error unless ``generator`` has ``name``, ``revision`` and ``complete``."""
    if not (
        isinstance(getattr(generator, "name", None), str)
        and callable(getattr(generator, "complete", None))
        and hasattr(generator, "revision")
    ):
        raise KilibError(
            f"{type(generator).__name__} is not a generator: pass a LocalGenerator, an "
            "OpenAICompatibleGenerator, or an object with name, revision and complete(prompts)"
        )


def ask(generator: Any, prompts: list[str]) -> list[str]:
    """``generator.complete(prompts)``, checked to answer every prompt (a missing reply is an error)."""
    replies = list(generator.complete(list(prompts)))
    if len(replies) != len(prompts):
        raise KilibError(
            f"generator {generator.name!r} returned {len(replies)} replies to {len(prompts)} prompts: "
            "complete() must answer every prompt, in order"
        )
    return [str(r) if r is not None else "" for r in replies]


def fill_prompt(template: str, **fields: Any) -> str:
    """``template`` with ``fields`` filled in (``str.format``), or an error that names the fields."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise KilibError(
            f"the prompt template does not format ({type(e).__name__}: {e}): use the fields "
            f"{', '.join('{' + f + '}' for f in fields)} and double literal braces ({{{{ }}}})"
        ) from None


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
