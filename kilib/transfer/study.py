"""Parametric knowledge transfer ("Seeking Neural Nuggets", Zhong et al., ICLR 2024): the
mathematics of extraction and injection (methods.md §2), for notebook 02.

* :func:`sensitivity`: S_i = sum_j |theta_i * dL(x_j)/dtheta_i| over seed samples x_j, the
  absolute value taken per sample, then summed, no normalisation; L is the mean cross-entropy
  over answer tokens only (the labels carry ``-100`` elsewhere).
* :func:`select_layers`: the teacher's top-``n`` blocks by summed sensitivity, back in their
  original order, to be mapped in order onto the student's ``n`` blocks.
* :func:`best_submatrix`: the contiguous window of the student's shape with the largest summed
  sensitivity, the first maximum in row-major order (the authors' double loop), found with a
  summed-area table.
* :func:`svd_factors`: the rank-``r`` factors (B, A) of an extracted matrix, B = U_r diag(S_r),
  A = V_r^T, which start the student's LoRA while its frozen weight becomes W - B A, so that at
  step 0 the student is unchanged.

* :func:`extract`: every student matrix cut from the teacher (selected blocks mapped in order;
  embeddings and output head keep the student's vocabulary rows and cut hidden columns), by
  sensitivity, or as the ablations' top rows and columns, or the random-window control.
* :func:`init_lora_from`: the student's LoRA (linear layers, embeddings, output head) started
  at the extracted factors, beside a frozen second adapter holding -B A: W - B A without
  touching W, which in 4-bit could not hold it exactly.

A 4-bit teacher's linear weights take their sensitivity from hooks (g^T x), so the tiny and
paper profiles run one path, with teacher and student in 4-bit. Not here yet: the GPT-NeoX fused q,k,v split
(Llama-family teachers and students only).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilib.lm.data import qa_prompt
from kilib.lm.models import dense_weight, is_4bit_param, logical_shape, model_ref
from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError


def sensitivity(
    model,
    batches: Iterable[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    via_hooks: bool = False,
    summed: bool = False,
) -> dict[str, Any]:
    """Sum over samples of |theta * dL/dtheta| for each parameter (or those in ``names``).

    Each batch must hold one sample (``input_ids`` and ``labels`` of shape ``[1, T]``): the
    absolute value is taken per sample, so a batch of several would sum their gradients first
    and give another (smaller) number. Gradients of the model are cleared before and after.

    A 4-bit weight cannot require grad, and needs none (methods.md §2, memory): the gradient of
    a linear layer's weight is g^T x, from the layer's input x and output gradient g, both
    caught by hooks, and it multiplies the dequantised weight. ``via_hooks`` takes every linear
    weight that way (the same numbers for a full-precision model; the tests compare the two).
    Only the running sums of the asked-for parameters are kept, in float32; with ``summed``,
    only each parameter's total (a scalar), which is all layer selection needs."""
    import torch

    from kilib.lm.models import check_trainable_4bit_layout

    check_trainable_4bit_layout(model)
    wanted = set(names) if names is not None else None
    all_params = dict(model.named_parameters())
    if wanted is not None and not wanted <= set(all_params):
        missing = sorted(wanted - set(all_params))
        raise KilibError(
            f"no parameter named {', '.join(missing[:3])} in the model: take names from named_parameters()"
        )
    hooked = {
        n + ".weight": m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and (via_hooks or is_4bit_param(m.weight))
        and (wanted is None or n + ".weight" in wanted)
    }
    params = {
        n: p
        for n, p in all_params.items()
        if (wanted is None or n in wanted) and n not in hooked and p.is_floating_point()
    }
    was = {n: p.requires_grad for n, p in all_params.items()}
    for n, p in all_params.items():
        if p.is_floating_point():
            p.requires_grad_(n in params)
    totals = {
        n: torch.zeros(() if summed else logical_shape(all_params[n]), dtype=torch.float32, device=all_params[n].device)
        for n in [*params, *hooked]
    }
    reduce = (lambda t: t.sum()) if summed else (lambda t: t)
    # A hooked weight's gradient for the sample: added into its running sum as soon as it is
    # complete (a layer called once per forward), so that no more than one layer's g^T x is
    # held at a time; a layer called more than once sums its gradient pieces first.
    weight_grads: dict[str, Any] = {}
    pending: dict[str, int] = {}  # per layer, its calls in this sample's forward whose gradient has not come

    def on_forward(name, module, args, output):
        x = args[0].detach()
        pending[name] = pending.get(name, 0) + 1

        def on_grad(g):
            gw = g.reshape(-1, g.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
            weight_grads[name] = weight_grads[name] + gw if name in weight_grads else gw
            pending[name] -= 1
            if pending[name] == 0:
                with torch.no_grad():
                    totals[name] += reduce((dense_weight(hooked[name].weight) * weight_grads.pop(name)).abs())

        if output.requires_grad:
            output.register_hook(on_grad)

    def inputs_require_grad(module, args, output):
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handles = [m.register_forward_hook(functools.partial(on_forward, n)) for n, m in hooked.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(inputs_require_grad))
    device = next(model.parameters()).device
    samples = 0
    try:
        for batch in batches:
            ids = batch["input_ids"]
            if ids.shape[0] != 1:
                raise KilibError(
                    f"sensitivity takes one sample per batch, got {ids.shape[0]}: its absolute value is per sample"
                )
            model.zero_grad(set_to_none=True)
            weight_grads.clear()
            pending.clear()
            mask = batch.get("attention_mask")
            out = model(
                input_ids=ids.to(device),
                attention_mask=None if mask is None else mask.to(device),
                labels=batch["labels"].to(device),
                use_cache=False,
            )
            out.loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is not None:
                        totals[n] += reduce((p.detach().float() * p.grad.float()).abs())
                for n, gw in weight_grads.items():  # a call whose output the loss did not use sent no gradient
                    totals[n] += reduce((dense_weight(hooked[n].weight) * gw).abs())
            samples += 1
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        for n, p in all_params.items():
            if p.is_floating_point():
                p.requires_grad_(was[n])
    if samples == 0:
        raise KilibError("sensitivity needs at least one seed sample: pass the task's seed examples")
    return totals


def select_layers(block_scores: Sequence[float], n: int) -> list[int]:
    """Indices of the ``n`` highest-scoring blocks, in their original order (ties go to the
    earlier block)."""
    if not 1 <= n <= len(block_scores):
        raise KilibError(
            f"cannot keep {n} of {len(block_scores)} teacher blocks: the teacher needs at least as many "
            "blocks as the student"
        )
    ranked = sorted(range(len(block_scores)), key=lambda i: (-float(block_scores[i]), i))
    return sorted(ranked[:n])


def block_scores(scores: Mapping[str, Any], n_blocks: int, prefix: str = "model.layers.") -> list[float]:
    """Each block's summed sensitivity over all its parameters (layer norms included), from
    :func:`sensitivity`'s output; ``prefix`` names the blocks (Llama: ``model.layers.``)."""
    totals = [0.0] * n_blocks
    for name, s in scores.items():
        if name.startswith(prefix):
            index = int(name[len(prefix) :].split(".", 1)[0])
            totals[index] += float(s.sum())
    return totals


def best_submatrix(scores, rows: int, cols: int) -> tuple[int, int]:
    """Top-left corner of the ``rows`` x ``cols`` window of the 2-D ``scores`` with the largest
    sum; the first such window in row-major order."""
    import torch

    height, width = scores.shape
    _check_fits(rows, cols, height, width)
    table = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    table[1:, 1:] = scores.double().cumsum(0).cumsum(1)
    sums = table[rows:, cols:] - table[:-rows, cols:] - table[rows:, :-cols] + table[:-rows, :-cols]
    flat = int(torch.argmax(sums.flatten()))  # the first maximum, row-major
    return divmod(flat, sums.shape[1])


def _check_fits(rows: int, cols: int, height: int, width: int) -> None:
    if not (1 <= rows <= height and 1 <= cols <= width):
        raise KilibError(
            f"a {rows}x{cols} window does not fit a {height}x{width} matrix: the student's shape must be "
            "no larger than the teacher's"
        )


def svd_factors(matrix, rank: int):
    """``(B, A)`` with ``B @ A`` the best rank-``rank`` approximation of ``matrix``:
    B = U_r diag(S_r) (out x r), A = V_r^T (r x in)."""
    import torch

    if not 1 <= rank <= min(matrix.shape):
        raise KilibError(f"rank {rank} is out of range for a {tuple(matrix.shape)} matrix")
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(matrix.dtype), vh[:rank].to(matrix.dtype)


HOW = ("sensitive", "top", "random")


def extract_matrix(
    weight, scores, shape: Sequence[int], how: str = "sensitive", vocab_rows: bool = False, generator=None
):
    """The ``shape`` piece of the teacher matrix ``weight`` chosen by its sensitivity ``scores``.

    ``how``: ``sensitive`` the contiguous window with the largest summed sensitivity
    (:func:`best_submatrix`); ``top`` the rows and the columns with the largest sensitivity
    sums, each kept in their order (an ablation); ``random`` a uniformly drawn window (the
    control). ``vocab_rows`` (embeddings, output head): the first ``shape[0]`` rows, the
    student's vocabulary, are kept whole and only hidden columns are chosen."""
    import torch

    if how not in HOW:
        raise KilibError(f"unknown extraction {how!r}: use one of {', '.join(HOW)}")
    rows, cols = int(shape[0]), int(shape[1])
    if vocab_rows:
        if rows > weight.shape[0]:
            raise KilibError(
                f"the student's vocabulary ({rows}) is larger than the teacher's ({weight.shape[0]}): "
                "pick models that share a tokenizer"
            )
        weight, scores = weight[:rows], scores[:rows]
    if how == "top":
        keep_r = torch.sort(torch.topk(scores.sum(1), rows).indices).values if not vocab_rows else torch.arange(rows)
        keep_c = torch.sort(torch.topk(scores.sum(0), cols).indices).values
        return weight[keep_r][:, keep_c].clone()
    if how == "random":
        _check_fits(rows, cols, *weight.shape)
        r0 = int(torch.randint(0, weight.shape[0] - rows + 1, (1,), generator=generator))
        c0 = int(torch.randint(0, weight.shape[1] - cols + 1, (1,), generator=generator))
    else:
        r0, c0 = best_submatrix(scores, rows, cols)
    return weight[r0 : r0 + rows, c0 : c0 + cols].clone()


def teacher_name(student_name: str, selected: Sequence[int], prefix: str = "model.layers.") -> str:
    """The teacher parameter a student parameter is cut from: block ``k`` from the ``k``-th
    selected block, everything outside the blocks from its namesake."""
    if not student_name.startswith(prefix):
        return student_name
    index, rest = student_name[len(prefix) :].split(".", 1)
    if int(index) >= len(selected):
        raise KilibError(
            f"student block {index} has no selected teacher block: select as many blocks as the student has"
        )
    return f"{prefix}{selected[int(index)]}.{rest}"


def extract(
    teacher,
    student,
    scores: Mapping[str, Any],
    selected: Sequence[int],
    how: str = "sensitive",
    seed: int = 0,
    prefix: str = "model.layers.",
    each=None,
) -> dict[str, Any]:
    """Every 2-D student parameter cut from the teacher (:func:`extract_matrix`), by name; with
    ``each(name, matrix)``, what it returns for each matrix as soon as that one is cut (so that
    a 7B student's matrices need not all be held at once)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    theirs = dict(teacher.named_parameters())
    out = {}
    for name, p in student.named_parameters():
        shape = logical_shape(p)
        if len(shape) != 2:
            continue
        source = teacher_name(name, selected, prefix)
        if source not in theirs or source not in scores:
            raise KilibError(
                f"the teacher has no {source} (for the student's {name}): pick two models of one architecture"
            )
        vocab = "embed_tokens" in name or "lm_head" in name
        cut = extract_matrix(
            dense_weight(theirs[source]), scores[source], shape, how, vocab_rows=vocab, generator=generator
        )
        out[name] = cut if each is None else each(name, cut)
    return out


def lora_factors(student, rank: int):
    """``(name, matrix) -> (B, A)``: the rank-``rank`` factors (:func:`svd_factors`) of a matrix
    cut for the student's parameter ``name``, oriented as its LoRA takes them: of the transposed
    matrix for an embedding (peft's embedding update is (B A)^T)."""
    import torch

    modules = dict(student.named_modules())

    def factors(name: str, matrix):
        matrix = matrix.to(torch.float32)
        embedding = isinstance(modules.get(name.removesuffix(".weight")), torch.nn.Embedding)
        return svd_factors(matrix.T if embedding else matrix, rank)

    return factors


def save_factors(factors: Mapping[str, tuple[Any, Any]], path: str | Path) -> None:
    """``{name: (B, A)}`` as one safetensors file (``<name>.B``, ``<name>.A``)."""
    from safetensors.torch import save_file

    save_file(
        {f"{n}.{part}": t.contiguous().cpu() for n, (b, a) in factors.items() for part, t in (("B", b), ("A", a))},
        str(path),
    )


def load_factors(path: str | Path) -> dict[str, tuple[Any, Any]]:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    return {n[:-2]: (flat[n], flat[n[:-2] + ".A"]) for n in flat if n.endswith(".B")}


RESIDUAL = "transfer_residual"  # the frozen adapter holding -B A


def init_lora_from(model, extracted: Mapping[str, Any], rank: int, adapter: str = "default") -> list[str]:
    """Start each LoRA of the peft ``model`` whose base weight has an extracted matrix at that
    matrix's rank-``rank`` factors (B scaled by 1/scaling, so the update is B A; a value may be
    the factors themselves, ``(B, A)`` from :func:`lora_factors`), and add a
    frozen second adapter holding -B A: the model computes W - B A + B A, the student unchanged
    at step 0 (methods.md §2, "initially equivalent"), whether W is in full precision or in
    4-bit (where W - B A could not be stored without requantising). Embedding LoRAs take the
    factors of the transposed matrix (peft's embedding update is (B A)^T). Returns the names
    of the weights it initialised."""
    import copy

    import torch

    from kilib.lm.models import peft_quietly

    if RESIDUAL in model.peft_config:
        raise KilibError("this model's LoRA was already started from extracted factors: attach a fresh LoRA first")
    if model.peft_config[adapter].r != rank:
        raise KilibError(f"the LoRA has rank {model.peft_config[adapter].r}, not {rank}: attach it with r={rank}")
    with peft_quietly():
        model.add_adapter(RESIDUAL, copy.deepcopy(model.peft_config[adapter]))
    done = []
    for module_name, module in model.named_modules():
        linear = adapter in getattr(module, "lora_A", {})
        if not (linear or adapter in getattr(module, "lora_embedding_A", {})) or not hasattr(module, "base_layer"):
            continue
        name = module_name.removeprefix("base_model.model.") + ".weight"
        if name not in extracted:
            continue
        value = extracted[name]
        if isinstance(value, tuple):
            b, a = (t.to(torch.float32) for t in value)
            if b.shape[1] != rank or a.shape[0] != rank:
                raise KilibError(
                    f"the factors of {name} have rank {b.shape[1]}, not {rank}: extract them at rank {rank}"
                )
        else:
            matrix = value.to(torch.float32)
            b, a = svd_factors(matrix if linear else matrix.T, rank)
        if linear:
            pairs = [(module.lora_A[k].weight, module.lora_B[k].weight) for k in (adapter, RESIDUAL)]
        else:
            pairs = [(module.lora_embedding_A[k], module.lora_embedding_B[k]) for k in (adapter, RESIDUAL)]
        b = b / module.scaling[adapter]
        with torch.no_grad():
            for (lora_a, lora_b), sign in zip(pairs, (1.0, -1.0)):
                lora_a.copy_(a)
                lora_b.copy_(sign * b)
        done.append(name)
    model.base_model.set_adapter([adapter, RESIDUAL])
    for n, p in model.named_parameters():
        if f".{RESIDUAL}" in n:
            p.requires_grad_(False)
    return done


# ---------------------------------------------------------------------------------------
# The study (notebook 02): tasks, presets, extraction and training jobs
# ---------------------------------------------------------------------------------------
TASKS = ("gsm", "mmlu", "sni")  # the paper's (AlpacaFarm needs a judge)
# Beyond the paper, tiny world only: closed-book questions on pre-cutoff facts, trained on some facts and
# asked about others, where the teacher knows twice what the student does (notebook 00): the most direct
# test of whether the teacher's parameters carry its knowledge.
TINY_TASKS = ("qa",)
# plain LoRA; + the teacher's most sensitive window; + its most sensitive rows and columns (the paper's
# ablation of the dimension reduction); + a random window (the control)
METHODS = ("lora", "sensitive", "top", "random")
CHOICES = "ABCD"
# Where a generated answer ends in the tiny profile: a blank line (the demonstrations' separator) or
# the next question.
STOP = ("\n\n", "\nQuestion:")

# Zhong et al. Table 1, Llama-2 rows (methods.md §2): the paper's numbers, printed beside ours.
PAPER_TABLE1 = {
    "vanilla 7B": {
        "gsm 0-shot": 3.34,
        "gsm few-shot": 15.54,
        "mmlu 0-shot": 41.70,
        "mmlu few-shot": 45.80,
        "sni exact": 0.00,
        "sni rouge-l": 4.68,
    },
    "vanilla 13B": {
        "gsm 0-shot": 6.52,
        "gsm few-shot": 27.82,
        "mmlu 0-shot": 52.10,
        "mmlu few-shot": 55.20,
        "sni exact": 0.00,
        "sni rouge-l": 4.84,
    },
    "7B-LoRA": {
        "gsm 0-shot": 23.38,
        "gsm few-shot": 21.05,
        "mmlu 0-shot": 47.77,
        "mmlu few-shot": 47.07,
        "sni exact": 24.93,
        "sni rouge-l": 41.25,
    },
    "+ 13B param.": {
        "gsm 0-shot": 25.30,
        "gsm few-shot": 26.31,
        "mmlu 0-shot": 49.37,
        "mmlu few-shot": 46.53,
        "sni exact": 26.16,
        "sni rouge-l": 42.98,
    },
}
PAPER_ROWS = {"student": "vanilla 7B", "teacher": "vanilla 13B", "lora": "7B-LoRA", "sensitive": "+ 13B param."}


def demonstrations_for(row, pool, k: int) -> list:
    """The ``k`` demonstrations a row is asked after: the first ``k`` of the pool, or, for a row
    with a subject (MMLU from the Hub), the first ``k`` of its subject."""
    subject = row.get("subject")
    return [d for d in pool if d.get("subject") == subject][:k] if subject else list(pool[:k])


# The eight chain-of-thought exemplars of Wei et al. (2022, Table 20), which open-instruct's GSM8K
# evaluation (the one Zhong et al. use) puts before each question in its 8-shot setting.
GSM_COT_EXEMPLARS = tuple(
    {"question": q, "rationale": r, "answer": a}
    for q, r, a in (
        (
            "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
            "there will be 21 trees. How many trees did the grove workers plant today?",
            "There are 15 trees originally. Then there were 21 trees after some more were planted. "
            "So there must have been 21 - 15 = 6. So the answer is 6.",
            "6",
        ),
        (
            "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
            "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
            "5",
        ),
        (
            "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
            "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
            "After eating 35, they had 74 - 35 = 39. So the answer is 39.",
            "39",
        ),
        (
            "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
            "How many lollipops did Jason give to Denny?",
            "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
            "So the answer is 8.",
            "8",
        ),
        (
            "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
            "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
            "So the answer is 9.",
            "9",
        ),
        (
            "There were nine computers in the server room. Five more computers were installed each day, from monday to "
            "thursday. How many computers are now in the server room?",
            "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
            "So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.",
            "29",
        ),
        (
            "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
            "How many golf balls did he have at the end of wednesday?",
            "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
            "After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
            "33",
        ),
        (
            "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
            "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
            "left. 23 - 15 is 8. So the answer is 8.",
            "8",
        ),
    )
)


def task_prompt(task: str, row, demos=(), evaluation: bool = False) -> str:
    """The prompt for one row, after ``demos`` (rows with their answers) for few-shot. A GSM
    prompt opens as open-instruct's does ("Answer the following question." or, before
    demonstrations, "questions."); an MMLU row with a subject opens with open-instruct's header
    naming it. ``evaluation``: the header as open-instruct's MMLU evaluation writes it, with two
    spaces after "about" (its ``format_subject`` prefixes a space); the authors' training data
    has one."""

    def one(r) -> str:
        if task == "gsm":
            return f"Question: {r['question'].strip()}\nAnswer:"
        if task == "mmlu":
            options = "\n".join(f"{c}. {t}" for c, t in zip(CHOICES, r["choices"]))
            return f"{r['question']}\n{options}\nAnswer:"
        if task == "sni":
            return f"{r['instruction']}\nInput: {r['input']}\nOutput:"
        if task == "qa":
            return qa_prompt(r["question"])
        raise KilibError(f"unknown task {task!r}: choose among {', '.join(TASKS + TINY_TASKS)}")

    shots = "".join(f"{one(d)} {task_answer(task, d)}\n\n" for d in demos)
    subject = row.get("subject") if task == "mmlu" else None
    about = "about  " if evaluation else "about "
    header = (
        f"The following are multiple choice questions (with answers) {about}{subject.replace('_', ' ')}.\n\n"
        if subject
        else ""
    )
    if task == "gsm":
        header = f"Answer the following question{'s' if demos else ''}.\n\n"
    return header + shots + one(row)


# The Tulu chat format of open-instruct, in which Zhong et al. train (their ``finetune.py
# --use_chat_prompt``: "<|user|>\n...\n<|assistant|>\n", the answer, EOS) and open-instruct
# evaluates (``--use_chat_format``, ``create_prompt_with_tulu_chat_format``).
TULU_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '<|system|>\n' + m['content'] + '\n' }}"
    "{% elif m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + m['content'] | trim }}{{ eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHAT_FORMATS = {"": None, "tulu": TULU_CHAT_TEMPLATE}


def chat_turn(task: str, prompt: str, chat_format: str = "", evaluation: bool = False) -> tuple[str, str]:
    """(the user's turn, the cue that opens the answer) for a :func:`task_prompt`.

    Without a chat format the whole prompt is the user's turn (the tiny tokenizer's chat template,
    or plain text for a base model) and there is no cue. In the Tulu format, as the authors'
    training data and open-instruct's chat evaluation write them: GSM's "Answer:" opens the
    assistant's turn ("Answer: <rationale>"); MMLU's user turn ends "Answer:", and its evaluation
    adds "The answer is:" after the assistant tag; SNI has no cue."""
    if not _chat_format_checked(chat_format):
        return prompt, ""
    if task == "gsm":
        return prompt.removesuffix("\nAnswer:"), "Answer:"
    if task == "mmlu" and evaluation:
        return prompt, "The answer is:"
    return prompt, ""


def _chat_format_checked(chat_format: str) -> str:
    if chat_format not in CHAT_FORMATS:
        raise KilibError(
            f"unknown chat format {chat_format!r}: choose among {', '.join(repr(c) for c in CHAT_FORMATS)}"
        )
    return chat_format


def use_chat_format(tokenizer, chat_format: str):
    """The tokenizer with ``chat_format``'s template in place of its own ("": unchanged), so that
    training (:func:`kilib.lm.training.tokenize_sft`) and evaluation render turns the same way."""
    if _chat_format_checked(chat_format):
        tokenizer.chat_template = CHAT_FORMATS[chat_format]
    return tokenizer


def _load(path: str, config: TransferConfig):
    """A teacher or student in the study's precision, its tokenizer in the study's chat format."""
    from kilib.lm.models import load_causal_lm

    model, tokenizer = load_causal_lm(path, quantization=config.quantization)
    return model, use_chat_format(tokenizer, config.chat_format)


def task_answer(task: str, row) -> str:
    """The training target: GSM's worked rationale ending in the answer, MMLU's letter, SNI's output,
    a closed-book question's answer."""
    return row["rationale"] if task == "gsm" else row["output"] if task == "sni" else row["answer"]


def score(task: str, prediction: str, row) -> dict[str, float]:
    """GSM: the last number equals the answer; MMLU: the letter is right (:func:`_evaluate` picks it
    by the next token's probability, as open-instruct does); SNI: exact
    match after normalisation, and ROUGE-L F1 against the output (Zhong et al. §4)."""
    from kilib.lm.scoring import exact_match, last_number, parse_choice

    if task == "gsm":
        return {"correct": float(last_number(prediction) == last_number(row["answer"]))}
    if task == "mmlu":
        return {"correct": float(parse_choice(prediction, list(CHOICES)) == row["answer"])}
    if task == "qa":
        return {"correct": exact_match(prediction, row["answer"])}
    return {"correct": exact_match(prediction, row["output"]), "rouge_l": _rouge_l(prediction, row["output"])}


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@dataclass(frozen=True)
class TransferConfig:
    """One profile of the transfer study (methods.md §2). The paper: Llama-2 13B into 7B, 32
    seed samples, LoRA rank 16 on every linear layer, the embeddings and the output head, 3
    epochs at 3e-4, global batch 64, 3% warmup, 1,000 training samples per task, examples of up to
    2,048 tokens (their ``train.sh``: ``--cutoff_len 2048``)."""

    teacher: str = "llama-m"  # zoo name (tiny, smoke) or Hub id / folder (paper)
    student: str = "llama-s"
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    seed_samples: int = 32
    train_samples: int = 1000
    eval_samples: int = 500
    shots: tuple[tuple[str, int], ...] = (("gsm", 8), ("mmlu", 5))  # the few-shot evaluations
    rank: int = 16
    quantization: str = "4bit"  # teacher and student, in every profile
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: tuple[tuple[str, int], ...] = (("gsm", 512), ("mmlu", 4), ("sni", 64), ("qa", 12))
    eval_batch_size: int = 16
    # "tulu": train and evaluate in open-instruct's Tulu chat format, as the authors do (their
    # finetune.py --use_chat_prompt; open-instruct's --use_chat_format); "": the task prompt as it
    # is, in the tokenizer's own chat template where it has one (the tiny zoo's).
    chat_format: str = ""
    # Generated answers are cut at these. open-instruct stops a chat-format answer at EOS only
    # (as here with ()), a plain one at "\n".
    stop: tuple[str, ...] = STOP
    train: TrainConfig = TrainConfig(
        epochs=3,
        batch_size=16,
        grad_accum=4,
        lr=3e-4,
        warmup_ratio=0.03,
        scheduler="linear",
        max_length=2048,
        save_every_epoch=False,
        progress=False,
        logging_steps=5,
    )


TRANSFER_PRESETS = {
    # The tiny world holds 504 pre-cutoff facts with three same-type alternatives, so MMLU's
    # seed, training and evaluation questions share them (32 + 300 + 150); GSM and SNI use the
    # same counts for one design. The zoo models read 256 positions, so GSM's few-shot
    # evaluation has one demonstration and MMLU's three. Batch 16 without accumulation and
    # notebook 01's tiny LoRA rate (3e-3): 300 samples at the paper's global batch 64 would be
    # 15 steps. Not tuned to any result.
    "tiny": TransferConfig(
        tasks=TASKS + TINY_TASKS,
        seed_samples=32,
        train_samples=300,
        eval_samples=150,
        shots=(("gsm", 1), ("mmlu", 3)),
        max_new_tokens=(("gsm", 96), ("mmlu", 4), ("sni", 32), ("qa", 12)),
        eval_batch_size=32,
        train=TrainConfig(
            epochs=3,
            batch_size=16,
            lr=3e-3,
            warmup_ratio=0.03,
            scheduler="linear",
            save_every_epoch=False,
            progress=False,
            logging_steps=5,
        ),
    ),
    # Enough steps (24) at a high rate for the smoke student to learn the answer formats.
    "smoke": TransferConfig(
        tasks=("gsm", "mmlu", "qa"),
        seed_samples=4,
        train_samples=64,
        eval_samples=24,
        rank=4,
        shots=(("mmlu", 1),),
        max_new_tokens=(("gsm", 24), ("mmlu", 4), ("sni", 16), ("qa", 12)),
        eval_batch_size=32,
        train=TrainConfig(
            epochs=3, batch_size=8, lr=1e-2, scheduler="linear", save_every_epoch=False, progress=False, logging_steps=1
        ),
    ),
    # The authors' chat format, and open-instruct's GSM8K evaluation: up to 512 new tokens, cut at EOS.
    "paper": TransferConfig(
        teacher="meta-llama/Llama-2-13b-hf", student="meta-llama/Llama-2-7b-hf", chat_format="tulu", stop=()
    ),
}


# The paper profile's data (methods.md §2): Hub dataset, config, and the split each role draws
# from. A local folder of parquet or jsonl files with the same split names works in its place.
# ``stream``: read in streaming mode and shuffled through a 10,000-row buffer (with the shards'
# order), for SNI's millions of rows. A buffer draws only from its first rows plus the sample,
# so for one ordered file (MMLU's test set is sorted by subject) it would never reach the end:
# GSM8K and MMLU are loaded whole and shuffled over every row. ``demos_by_subject``: the whole
# demonstration split in its order, and each question's k demonstrations are the first k of its
# subject (MMLU's dev set has five per subject), as in open-instruct's MMLU evaluation. GSM8K's
# demonstrations are no split but :data:`GSM_COT_EXEMPLARS`, as in open-instruct's GSM8K evaluation.
PAPER_DATASETS = {
    "gsm": {
        "path": "openai/gsm8k",
        "name": "main",
        "train": "train",
        "demos": "cot-exemplars",
        "eval": "test",
        "stream": False,
    },
    "mmlu": {
        "path": "cais/mmlu",
        "name": "all",
        "train": "auxiliary_train",
        "demos": "dev",
        "eval": "test",
        "stream": False,
        "demos_by_subject": True,
    },
    "sni": {
        "path": "Muennighoff/natural-instructions",
        "name": None,
        "train": "train",
        "demos": "train",
        "eval": "test",
        "stream": True,
    },
}
_HUB_FIELDS = {
    "gsm": ("question", "answer"),
    "mmlu": ("question", "choices", "answer"),
    "sni": ("definition", "inputs", "targets"),
}


def task_row(task: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A Hub row in the fields the tiny world's tasks have: GSM8K's "rationale #### 72" becomes
    the answer "72" and the rationale as Zhong et al. train on it (their ``data/gsm``): the
    calculator annotations ``<<48/2=24>>`` removed, the lines joined by spaces, ending "So the
    answer is 72." as the chain-of-thought exemplars do; MMLU's answer index becomes
    its letter (its subject kept, for same-subject demonstrations); SNI's definition, inputs and
    targets become instruction, input and output."""
    missing = [f for f in _HUB_FIELDS[task] if f not in row]
    if missing:
        raise KilibError(
            f"{task} rows need the field(s) {', '.join(missing)}; found {', '.join(row)}: "
            f"point the loader at a copy of {PAPER_DATASETS[task]['path']}"
        )
    if task == "gsm":
        rationale, sep, final = str(row["answer"]).rpartition("####")
        if not sep:
            raise KilibError(f"a GSM8K answer without '#### <number>': {str(row['answer'])[:60]!r}")
        final = final.strip().replace(",", "")
        steps = " ".join(line.strip() for line in re.sub(r"<<[^>]*>>", "", rationale).splitlines() if line.strip())
        ending = f"So the answer is {final}."
        return {
            "question": row["question"],
            "answer": final,
            "rationale": f"{steps.rstrip('.')}. {ending}" if steps else ending,
        }
    if task == "mmlu":
        answer = row["answer"]
        letter = CHOICES[int(answer)] if not isinstance(answer, str) or answer.isdigit() else answer.strip().upper()
        return {
            "question": row["question"],
            "choices": list(row["choices"]),
            "answer": letter,
            "subject": str(row.get("subject") or ""),
        }
    return {
        "instruction": row["definition"],
        "input": row["inputs"],
        "output": row["targets"][0] if isinstance(row["targets"], list) else row["targets"],
    }


def hub_task_rows(task: str, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """``sizes`` rows per role (seed, train, demos, eval) from the task's Hub dataset, shuffled
    with ``seed``: over the whole split, or streamed through a buffer where the dataset says
    ``stream`` (SNI's training split alone has millions of rows). Seed, training and, where they
    share a split, demonstration rows are disjoint."""
    from datasets import load_dataset

    spec = PAPER_DATASETS[task]
    local = Path(str(spec["path"])).expanduser()
    streaming = bool(spec.get("stream", True))

    def open_split(split: str):
        if not local.is_dir():
            return load_dataset(spec["path"], spec["name"], split=split, streaming=streaming)
        files = sorted(p for p in local.iterdir() if p.name.split(".")[0].split("-")[0] == split)
        kinds = {p.suffix for p in files}
        if not files or len(kinds) != 1 or kinds - {".jsonl", ".json", ".parquet"}:
            raise KilibError(
                f"{local} has no single-format {split}.jsonl or {split}.parquet (or {split}-*.parquet) "
                f"for {task}: add it, or point transfer.PAPER_DATASETS at another folder"
            )
        builder = "parquet" if kinds == {".parquet"} else "json"
        return load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=streaming)

    def stream(split: str, n: int | None):
        """``n`` rows drawn with the seed; ``None``: every row, in the split's order."""
        try:
            data = open_split(split)
        except (OSError, ValueError, ConnectionError) as e:
            raise KilibError(
                f"cannot load {spec['path']} ({split}) for {task}: {str(e).splitlines()[0][:200]}. "
                "Connect to the Hub once to cache it, or set transfer.PAPER_DATASETS to a local copy"
            ) from e
        if n is None:
            return [task_row(task, r) for r in data]
        if streaming:
            return [task_row(task, r) for r in data.shuffle(seed=seed, buffer_size=10_000).take(n)]
        return [task_row(task, r) for r in data.shuffle(seed=seed).select(range(min(n, len(data))))]

    order = ["seed", "train"] + (["demos"] if spec["demos"] == spec["train"] else [])
    drawn = stream(spec["train"], sum(sizes.get(k, 0) for k in order))
    rows, start = {}, 0
    for role in order:
        rows[role] = drawn[start : start + sizes.get(role, 0)]
        start += sizes.get(role, 0)
    if spec["demos"] == "cot-exemplars":
        if sizes.get("demos", 0) > len(GSM_COT_EXEMPLARS):
            raise KilibError(
                f"{task} has {len(GSM_COT_EXEMPLARS)} chain-of-thought exemplars, not {sizes['demos']}: "
                f"ask for at most {len(GSM_COT_EXEMPLARS)} shots"
            )
        rows["demos"] = [dict(d) for d in GSM_COT_EXEMPLARS[: sizes.get("demos", 0)]]
    elif "demos" not in rows:
        rows["demos"] = stream(spec["demos"], None if spec.get("demos_by_subject") else sizes.get("demos", 0))
    rows["eval"] = stream(spec["eval"], sizes["eval"])
    short = [
        f"{role} ({len(rows[role])} of {sizes.get(role, 0)})" for role in rows if len(rows[role]) < sizes.get(role, 0)
    ]
    if short:
        raise KilibError(f"{spec['path']} has too few rows for {task}: {', '.join(short)}; lower the sample counts")
    return rows


def notebook_overrides(teacher: str = "", student: str = "", tasks: str = "", seeds: int = 0) -> dict[str, Any]:
    """Notebook 02's parameters as preset overrides: "" and 0 keep the profile's value; ``tasks``
    is a comma-separated subset of :data:`TASKS`; ``seeds`` n > 0 runs seeds 0 to n-1."""
    if seeds < 0:
        raise KilibError(f"SEEDS must be >= 0 (0 keeps the profile's seeds), got {seeds}")
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    unknown = [t for t in names if t not in TASKS + TINY_TASKS]
    if unknown:
        raise KilibError(f"unknown task(s) {', '.join(unknown)} in TASKS: choose among {', '.join(TASKS + TINY_TASKS)}")
    out = {"teacher": teacher, "student": student, "tasks": names, "seeds": tuple(range(seeds))}
    return {k: v for k, v in out.items() if v}


@dataclass
class TransferInputs:
    teacher: str  # a model folder or Hub id
    student: str
    rows: dict[str, dict[str, list[dict]]]  # task -> split (seed, train, eval, demos) -> rows
    source: str


def study_inputs(profile: str, config: TransferConfig) -> TransferInputs:
    """Models and task rows for a profile, split into disjoint seed, training, evaluation and
    demonstration rows. Tiny and smoke: two zoo models (built on first use), the world's GSM,
    MMLU and SNI analogues and its closed-book questions. Paper: the Hub models and datasets
    (:data:`PAPER_DATASETS`)."""
    from kilib.lm.models import check_same_tokenizer, load_tokenizer
    from kilib.tiny import zoo

    unknown = [t for t in config.tasks if t not in TASKS + TINY_TASKS]
    if unknown or not config.tasks:
        raise KilibError(
            f"unknown task(s) {', '.join(unknown) or '(none given)'}: choose among {', '.join(TASKS + TINY_TASKS)}"
        )
    bad = [m for m in config.methods if m not in METHODS]
    if bad or "lora" not in config.methods:
        raise KilibError(
            f"methods must include 'lora' and be among {', '.join(METHODS)}; got {', '.join(config.methods)}"
        )

    def sizes(task: str) -> dict[str, int]:
        return {
            "seed": config.seed_samples,
            "train": config.train_samples,
            "eval": config.eval_samples,
            "demos": max(_shots(config, task)),
        }

    if profile == "paper":
        tiny_only = [t for t in config.tasks if t in TINY_TASKS]
        if tiny_only:
            raise KilibError(
                f"{', '.join(tiny_only)} asks about the tiny world's facts and has no Hub dataset: "
                f"drop it from TASKS for the paper profile (its tasks: {', '.join(TASKS)})"
            )
        teacher, student = config.teacher, config.student
        check_same_tokenizer(load_tokenizer(teacher), load_tokenizer(student), (teacher, student))
        rows = {task: hub_task_rows(task, sizes(task)) for task in config.tasks}
        return TransferInputs(teacher, student, rows, f"Hub models and datasets: {teacher} into {student}")
    zconfig = zoo.zoo_config(profile)
    teacher, student = (str(zoo.model_dir(zconfig, n)) for n in (config.teacher, config.student))
    check_same_tokenizer(load_tokenizer(teacher), load_tokenizer(student), (config.teacher, config.student))
    world = zoo.world_of(zconfig)
    rows = {}
    for task in config.tasks:
        counts = sizes(task)
        if task == "qa":
            rows[task] = _qa_rows(world, counts)
            continue
        drawn = getattr(world, task)(sum(counts.values()), seed=0).to_list()
        rows[task], start = {}, 0
        for split, n in counts.items():
            rows[task][split] = drawn[start : start + n]
            start += n
    return TransferInputs(
        teacher, student, rows, f"the {zconfig.world_size} world: {config.teacher} into {config.student}"
    )


def _qa_rows(world, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """Closed-book rows on pre-cutoff facts, each role on its own facts: the evaluation facts are
    never trained on (nor seen in the seed samples), and are asked with their first eval
    paraphrase, as notebook 00 asks them; the other roles use the first train paraphrase."""
    import random

    facts = sorted(f for f in world.facts if world.facts[f].period == "pre")
    if sum(sizes.values()) > len(facts):
        raise KilibError(
            f"qa needs {sum(sizes.values())} pre-cutoff facts and the world has {len(facts)}: lower the sample counts"
        )
    random.Random(f"transfer-qa|{seed}").shuffle(facts)
    rows, start = {}, 0
    for role, n in sizes.items():
        split = "eval" if role == "eval" else "train"
        rows[role] = [
            {"question": world.questions(f, split)[0], "answer": world.facts[f].object, "fact_id": f}
            for f in facts[start : start + n]
        ]
        start += n
    return rows


def _shots(config: TransferConfig, task: str) -> list[int]:
    return [0] + [k for t, k in config.shots if t == task and k > 0]


def train_pair(task: str, row, chat_format: str = "") -> dict[str, str]:
    """The (user turn, answer) pair a seed or training row is shown as (a zero-shot prompt); in a
    chat format with a cue, the answer opens with it ("Answer: <rationale>")."""
    user, cue = chat_turn(task, task_prompt(task, row), chat_format)
    return {"prompt": user, "answer": f"{cue} {task_answer(task, row)}" if cue else task_answer(task, row)}


def _train_pairs(task: str, rows, chat_format: str = "") -> list[dict[str, str]]:
    return [train_pair(task, r, chat_format) for r in rows]


def _eval_prompts(inputs: TransferInputs, config: TransferConfig, task: str) -> list[tuple[int, int, str, str]]:
    """(shots, item, user turn, cue) for every evaluation question at every shot count: the model
    reads the user turn in the chat template, then the cue (see :func:`chat_turn`)."""
    rows, demos = inputs.rows[task]["eval"], inputs.rows[task]["demos"]
    return [
        (
            k,
            i,
            *chat_turn(
                task,
                task_prompt(task, r, demonstrations_for(r, demos, k), evaluation=True),
                config.chat_format,
                evaluation=True,
            ),
        )
        for k in _shots(config, task)
        for i, r in enumerate(rows)
    ]


def _prompts_hash(pairs=(), prompts=(), stop: Sequence[str] = ()) -> str:
    """A hash of the text a job shows the model and, where it generates, of the stop strings
    that cut its answers, so that a change of prompt format or of the stop strings misses the cache."""
    from kilib.results import stable_hash

    return stable_hash(
        {
            "pairs": list(pairs),
            "prompts": [p for *_, p, cue in prompts],
            **({"cues": [cue for *_, cue in prompts]} if any(cue for *_, cue in prompts) else {}),
            **({"stop": list(stop)} if stop else {}),
        }
    )


def _samples(tokenizer, task: str, rows, max_length: int, chat_format: str = "") -> list[dict]:
    import torch

    from kilib.lm.training import tokenize_sft

    out = []
    for pair in _train_pairs(task, rows, chat_format):
        ex = tokenize_sft(tokenizer, pair["prompt"], pair["answer"], max_length)
        out.append({"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])})
    return out


def extraction(inputs: TransferInputs, config: TransferConfig, task: str) -> Path:
    """The teacher's sensitivity on the task's seed samples, the selected blocks, and every
    student matrix cut out by each way in ``config.methods``, saved with safetensors; cached
    by a hash of the models, the seed rows and the settings."""
    from kilib.results import cached_dir

    key = {
        "kind": "transfer-extraction",
        "version": 3,
        "teacher": model_ref(inputs.teacher),
        "student": model_ref(inputs.student),
        "task": task,
        "seed_rows": inputs.rows[task]["seed"],
        "quantization": config.quantization,
        "methods": [m for m in config.methods if m != "lora"],
        "rank": config.rank,
        "prompts": _prompts_hash(_train_pairs(task, inputs.rows[task]["seed"], config.chat_format)),
        "max_length": config.train.max_length,
        **({"chat_format": config.chat_format} if config.chat_format else {}),
    }
    return cached_dir("transfer", key, lambda tmp: _extract(inputs, config, task, key["methods"], tmp))


def _extract(inputs: TransferInputs, config: TransferConfig, task: str, methods, folder: Path) -> None:
    import torch

    from kilib.lm.models import decoder_layers
    from kilib.results import write_json

    teacher, tokenizer = _load(inputs.teacher, config)
    student, _ = _load(inputs.student, config)
    samples = _samples(tokenizer, task, inputs.rows[task]["seed"], config.train.max_length, config.chat_format)
    # Two passes, so that a 13B teacher's sensitivity fits beside it on one GPU (methods.md §2,
    # memory): totals per parameter choose the blocks, then only the matrices the student's
    # shapes are cut from are kept whole.
    blocks = block_scores(sensitivity(teacher, samples, summed=True), len(decoder_layers(teacher)))
    selected = select_layers(blocks, len(decoder_layers(student)))
    needed = sorted({teacher_name(n, selected) for n, p in student.named_parameters() if len(logical_shape(p)) == 2})
    scores = sensitivity(teacher, samples, names=needed)
    # Only each matrix's rank-r factors are kept (the LoRA starts from them): a 7B student's cut
    # matrices in float32 would take 27 GB per way of cutting.
    for how in methods:
        save_factors(
            extract(teacher, student, scores, selected, how=how, seed=0, each=lora_factors(student, config.rank)),
            folder / f"{how}.safetensors",
        )
    probe = "model.layers.{}.mlp.down_proj.weight"
    heat = {
        "name": probe.format(selected[0]),
        "shape": list(logical_shape(dict(student.named_parameters())[probe.format(0)])),
    }
    torch.save(scores[heat["name"]].cpu(), folder / "probe_sensitivity.pt")
    write_json(
        folder / "extraction.json",
        {"block_scores": blocks, "selected": selected, "probe": heat, "seed_samples": len(inputs.rows[task]["seed"])},
    )


def _letter_tokens(tokenizer, cue: str = "") -> list[int]:
    """The token each of MMLU's letters starts with where the model answers: after a cue ("The
    answer is:"), open-instruct's " A" (the last token of its tokenisation); else the answer's
    first token as training tokenises it (right after the chat template's assistant tag)."""
    from kilib.lm.training import IGNORE_INDEX, tokenize_sft

    if cue:
        ids = [tokenizer(" " + c, add_special_tokens=False).input_ids[-1] for c in CHOICES]
    else:
        ids = []
        for c in CHOICES:
            ex = tokenize_sft(tokenizer, "?", c)
            ids.append(next(t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX))
    if len(set(ids)) != len(CHOICES):
        raise KilibError(
            "the tokenizer starts two of the letters A to D with one token, so MMLU cannot be scored by "
            "the next token: use a tokenizer that writes the letters apart"
        )
    return ids


def _evaluate(model, tokenizer, task: str, inputs: TransferInputs, config: TransferConfig) -> list[dict]:
    """Every evaluation question's answer, scored. GSM, SNI and the closed-book questions generate
    greedily, cut at ``config.stop``; MMLU takes the letter whose token is most likely next, as
    open-instruct's evaluation does (``letter_mass``: the probability the four letters hold)."""
    from kilib.lm.inference import generate, next_token_choice
    from kilib.lm.training import render_prompt

    asked, rows, answers = _eval_prompts(inputs, config, task), inputs.rows[task]["eval"], []
    if task == "mmlu":
        letters = _letter_tokens(tokenizer, chat_turn(task, "", config.chat_format, evaluation=True)[1])
    for k in _shots(config, task):  # one call per shot count, each batched longest first
        these = [(i, render_prompt(tokenizer, user) + cue) for shots, i, user, cue in asked if shots == k]
        texts = [t for _, t in these]
        if task == "mmlu":
            picked = next_token_choice(model, tokenizer, texts, letters, batch_size=config.eval_batch_size)
            answers += [
                {
                    "shots": k,
                    "item": i,
                    "prediction": CHOICES[c],
                    "letter_mass": sum(p),
                    **score(task, CHOICES[c], rows[i]),
                }
                for (i, _), (c, p) in zip(these, picked)
            ]
            continue
        outputs = generate(
            model,
            tokenizer,
            texts,
            max_new_tokens=dict(config.max_new_tokens)[task],
            batch_size=config.eval_batch_size,
            stop=config.stop,
        )
        answers += [
            {"shots": k, "item": i, "prediction": o, **score(task, o, rows[i])} for (i, _), o in zip(these, outputs)
        ]
    return answers


def run_job(inputs: TransferInputs, config: TransferConfig, task: str, method: str, seed: int) -> dict:
    """Train the student's LoRA on the task (``lora``: peft's initialisation; otherwise started at
    the teacher matrices cut by ``method``) and answer the evaluation rows; cached."""
    from kilib.results import cached_dir, read_json

    key = {
        "kind": "transfer-run",
        "version": 2,
        "student": model_ref(inputs.student),
        "task": task,
        "method": method,
        "seed": seed,
        "train_rows": inputs.rows[task]["train"],
        "eval_rows": inputs.rows[task]["eval"],
        "demos": inputs.rows[task]["demos"],
        "extraction": extraction(inputs, config, task).name if method != "lora" else None,
        "config": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in ("teacher", "student", "tasks", "methods", "seeds")
        },
        "prompts": _prompts_hash(
            _train_pairs(task, inputs.rows[task]["train"], config.chat_format),
            _eval_prompts(inputs, config, task),
            config.stop,
        ),
    }
    folder = cached_dir("transfer", key, lambda tmp: _run(inputs, config, task, method, seed, tmp))
    return read_json(folder / "run.json")


def _run(inputs: TransferInputs, config: TransferConfig, task: str, method: str, seed: int, folder: Path) -> None:
    from kilib.lm.models import attach_lora
    from kilib.lm.training import sft_dataset, train
    from kilib.results import write_json
    from kilib.runtime import set_seed

    model, tokenizer = _load(inputs.student, config)
    set_seed(seed)
    model = attach_lora(model, r=config.rank, include_embeddings=True)
    initialised = []
    if method != "lora":
        initialised = init_lora_from(
            model, load_factors(extraction(inputs, config, task) / f"{method}.safetensors"), config.rank
        )
    rows = _train_pairs(task, inputs.rows[task]["train"], config.chat_format)
    train_config = dataclasses.replace(config.train, seed=seed)
    result = train(
        model,
        sft_dataset(tokenizer, rows, max_length=train_config.max_length),
        train_config,
        folder / "checkpoints",
        tokenizer=tokenizer,
    )
    answers = _evaluate(model, tokenizer, task, inputs, config)
    write_json(
        folder / "run.json",
        {
            "task": task,
            "method": method,
            "seed": seed,
            "initialised": len(initialised),
            "train": {"steps": result.steps, "losses": result.losses, "seconds": result.seconds},
            "answers": answers,
        },
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def baseline(inputs: TransferInputs, config: TransferConfig, task: str, which: str) -> dict:
    """The untrained ``student`` or ``teacher`` on the evaluation rows (Table 1's vanilla rows); cached."""
    from kilib.results import cached_dir, read_json

    path = inputs.student if which == "student" else inputs.teacher
    key = {
        "kind": "transfer-baseline",
        "version": 2,
        "model": model_ref(path),
        "task": task,
        "eval_rows": inputs.rows[task]["eval"],
        "demos": inputs.rows[task]["demos"],
        "shots": _shots(config, task),
        "max_new_tokens": dict(config.max_new_tokens)[task],
        "quantization": config.quantization,
        "prompts": _prompts_hash(prompts=_eval_prompts(inputs, config, task), stop=config.stop),
        **({"chat_format": config.chat_format} if config.chat_format else {}),
    }

    def build(tmp: Path) -> None:
        from kilib.results import write_json

        model, tokenizer = _load(path, config)
        write_json(
            tmp / "run.json",
            {"task": task, "method": which, "answers": _evaluate(model, tokenizer, task, inputs, config)},
        )

    return read_json(cached_dir("transfer", key, build) / "run.json")


def answer_rows(runs) -> list[dict]:
    """One row per answer, tagged with the run's task, method and seed."""
    return [
        {"task": r["task"], "method": r["method"], "seed": r.get("seed", 0), **a} for r in runs for a in r["answers"]
    ]


def results_table(answers) -> pandas.DataFrame:
    """Accuracy (and SNI's ROUGE-L) per task, shots and method, each with a 95% bootstrap
    interval over items (seeds pooled), in percent as Table 1 prints them."""
    import pandas as pd

    from kilib.stats import bootstrap_ci

    df = pd.DataFrame(answers)
    out = []
    for (task, shots, method), g in df.groupby(["task", "shots", "method"], sort=False):
        label = {"sni": "exact", "qa": "closed book"}.get(task, "0-shot" if shots == 0 else "few-shot")
        measures = [(label, "correct")]
        if task == "sni":
            measures.append(("rouge-l", "rouge_l"))
        for label, col in measures:
            mean, low, high = bootstrap_ci(g[col].astype(float))
            out.append(
                {
                    "task": task,
                    "measure": f"{task} {label}",
                    "method": method,
                    "score": 100 * mean,
                    "ci_low": 100 * low,
                    "ci_high": 100 * high,
                    "n": len(g),
                }
            )
    return pd.DataFrame(out)


def compare(answers, task: str, better: str, worse: str, claim: str, shots: int = 0, column: str = "correct") -> dict:
    """``better`` against ``worse`` on one task's items (scores averaged over seeds per item),
    paired by item: the difference with a 95% bootstrap interval and a verdict."""
    import pandas as pd

    from kilib.stats import paired_comparison

    df = pd.DataFrame(answers)
    df = df[(df.task == task) & (df.shots == shots)]
    return {"claim": claim, "task": task, **paired_comparison(df, "method", better, worse, column)}
