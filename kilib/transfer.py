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
* :func:`init_lora_from`: a full-precision student's LoRA started at the extracted factors, its
  frozen weights lowered by the same product.

What is not here yet: the 4-bit teacher's sensitivity from hooks (g^T x per linear layer, the
paper profile's memory plan), injection into a 4-bit student (W - B A would have to be
requantised, which breaks the step-0 equality; a frozen second adapter holding -B A would keep
it exact), LoRA on the embeddings, the GPT-NeoX fused
q,k,v split, and the notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kilib.runtime import KilibError


def sensitivity(model, batches: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Sum over samples of |theta * dL/dtheta| for each parameter (or those in ``names``).

    Each batch must hold one sample (``input_ids`` and ``labels`` of shape ``[1, T]``): the
    absolute value is taken per sample, so a batch of several would sum their gradients first
    and give another (smaller) number. Gradients of the model are cleared before and after."""
    import torch

    params = {n: p for n, p in model.named_parameters() if names is None or n in set(names)}
    if names is not None and len(params) != len(set(names)):
        missing = sorted(set(names) - set(params))
        raise KilibError(f"no parameter named {', '.join(missing[:3])} in the model: take names from named_parameters()")
    was = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    samples = 0
    try:
        for batch in batches:
            ids = batch["input_ids"]
            if ids.shape[0] != 1:
                raise KilibError(f"sensitivity takes one sample per batch, got {ids.shape[0]}: its absolute value is per sample")
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, attention_mask=batch.get("attention_mask"), labels=batch["labels"])
            out.loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is not None:
                        totals[n] += (p.detach().float() * p.grad.float()).abs()
            samples += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(was[n])
    if samples == 0:
        raise KilibError("sensitivity needs at least one seed sample: pass the task's seed examples")
    return totals


def select_layers(block_scores: Sequence[float], n: int) -> list[int]:
    """Indices of the ``n`` highest-scoring blocks, in their original order (ties go to the
    earlier block)."""
    if not 1 <= n <= len(block_scores):
        raise KilibError(f"cannot keep {n} of {len(block_scores)} teacher blocks: the teacher needs at least as many "
                         "blocks as the student")
    ranked = sorted(range(len(block_scores)), key=lambda i: (-float(block_scores[i]), i))
    return sorted(ranked[:n])


def block_scores(scores: Mapping[str, Any], n_blocks: int, prefix: str = "model.layers.") -> list[float]:
    """Each block's summed sensitivity over all its parameters (layer norms included), from
    :func:`sensitivity`'s output; ``prefix`` names the blocks (Llama: ``model.layers.``)."""
    totals = [0.0] * n_blocks
    for name, s in scores.items():
        if name.startswith(prefix):
            index = int(name[len(prefix):].split(".", 1)[0])
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
        raise KilibError(f"a {rows}x{cols} window does not fit a {height}x{width} matrix: the student's shape must be "
                         "no larger than the teacher's")


def svd_factors(matrix, rank: int):
    """``(B, A)`` with ``B @ A`` the best rank-``rank`` approximation of ``matrix``:
    B = U_r diag(S_r) (out x r), A = V_r^T (r x in)."""
    import torch

    if not 1 <= rank <= min(matrix.shape):
        raise KilibError(f"rank {rank} is out of range for a {tuple(matrix.shape)} matrix")
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(matrix.dtype), vh[:rank].to(matrix.dtype)


HOW = ("sensitive", "top", "random")


def extract_matrix(weight, scores, shape: Sequence[int], how: str = "sensitive", vocab_rows: bool = False,
                   generator=None):
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
            raise KilibError(f"the student's vocabulary ({rows}) is larger than the teacher's ({weight.shape[0]}): "
                             "pick models that share a tokenizer")
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
    return weight[r0:r0 + rows, c0:c0 + cols].clone()


def teacher_name(student_name: str, selected: Sequence[int], prefix: str = "model.layers.") -> str:
    """The teacher parameter a student parameter is cut from: block ``k`` from the ``k``-th
    selected block, everything outside the blocks from its namesake."""
    if not student_name.startswith(prefix):
        return student_name
    index, rest = student_name[len(prefix):].split(".", 1)
    if int(index) >= len(selected):
        raise KilibError(f"student block {index} has no selected teacher block: select as many blocks as the student has")
    return f"{prefix}{selected[int(index)]}.{rest}"


def extract(teacher, student, scores: Mapping[str, Any], selected: Sequence[int], how: str = "sensitive",
            seed: int = 0, prefix: str = "model.layers.") -> dict[str, Any]:
    """Every 2-D student parameter cut from the teacher (:func:`extract_matrix`), by name."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    theirs = dict(teacher.named_parameters())
    out = {}
    for name, p in student.named_parameters():
        if p.dim() != 2:
            continue
        source = teacher_name(name, selected, prefix)
        if source not in theirs or source not in scores:
            raise KilibError(f"the teacher has no {source} (for the student's {name}): pick two models of one architecture")
        vocab = "embed_tokens" in name or "lm_head" in name
        out[name] = extract_matrix(theirs[source].detach(), scores[source], p.shape, how, vocab_rows=vocab, generator=generator)
    return out


def init_lora_from(model, extracted: Mapping[str, Any], rank: int, adapter: str = "default") -> list[str]:
    """Start each LoRA of the peft ``model`` whose base weight has an extracted matrix at that
    matrix's rank-``rank`` factors (B scaled by 1/scaling, so the update is B A), and lower the
    frozen base weight by B A: the model's outputs are unchanged at step 0. Returns the names
    of the weights it initialised."""
    import torch

    done = []
    for module_name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and adapter in module.lora_A and hasattr(module, "base_layer")):
            continue
        name = module_name.removeprefix("base_model.model.") + ".weight"
        if name not in extracted:
            continue
        base = module.base_layer.weight
        if base.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise KilibError(f"{name} is quantized: W - B A cannot be stored exactly there; load the student in full precision")
        b, a = svd_factors(extracted[name].to(torch.float32), rank)
        if module.lora_A[adapter].weight.shape != a.shape:
            raise KilibError(f"the LoRA on {name} has rank {module.lora_A[adapter].weight.shape[0]}, not {rank}: attach it with r={rank}")
        with torch.no_grad():
            module.lora_B[adapter].weight.copy_(b / module.scaling[adapter])
            module.lora_A[adapter].weight.copy_(a)
            base -= (b @ a).to(base.dtype)
        done.append(name)
    return done
