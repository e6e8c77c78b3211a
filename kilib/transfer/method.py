"""Parametric knowledge transfer's mathematics (Zhong et al., "Seeking Neural Nuggets", ICLR 2024,
§3; docs/methods.md, "## 02 Parametric knowledge transfer").

Extraction (§3.1):

* :func:`sensitivity`: S_i = sum_j |theta_i * dL(x_j)/dtheta_i| over seed samples x_j, the
  absolute value taken per sample, then summed, no normalisation; L is the mean cross-entropy
  over answer tokens only (the labels carry ``-100`` elsewhere).
* :func:`block_scores` and :func:`select_layers`: the teacher's top-``n`` blocks by summed
  sensitivity, back in their original order, to be mapped in order onto the student's ``n`` blocks.
* :func:`best_submatrix`: the contiguous window of the student's shape with the largest summed
  sensitivity, the first maximum in row-major order (the authors' double loop), found with a
  summed-area table.
* :func:`extract_matrix` and :func:`extract`: every student matrix cut from the teacher
  (selected blocks mapped in order; embeddings and output head keep the student's vocabulary
  rows and cut hidden columns), by sensitivity, or as the ablations' top rows and columns, or
  the random-window control.

Injection (§3.2):

* :func:`svd_factors`: the rank-``r`` factors (B, A) of an extracted matrix, B = U_r diag(S_r),
  A = V_r^T, which start the student's LoRA while its frozen weight becomes W - B A, so that at
  step 0 the student is unchanged.
* :func:`init_lora_from`: the student's LoRA (linear layers, embeddings, output head) started
  at the extracted factors, beside a frozen second adapter holding -B A: W - B A without
  touching W, which in 4-bit could not hold it exactly.

A 4-bit teacher's linear weights take their sensitivity from hooks (g^T x), so the tiny and
paper profiles run one path, with teacher and student in 4-bit. Not here yet: the GPT-NeoX fused
q,k,v split (Llama-family teachers and students only).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kilib.lm.models import check_trainable_4bit_layout, dense_weight, is_4bit_param, logical_shape, peft_quietly
from kilib.lm.training import checkpointed_blocks
from kilib.runtime import KilibError

HOW = ("sensitive", "top", "random")  # the ways of cutting a teacher matrix (extract_matrix)
RESIDUAL = "transfer_residual"  # the frozen adapter holding -B A
# svd_factors: a matrix whose shorter side is at most this takes the exact SVD, a larger one a truncated one
EXACT_SVD_UP_TO = 1024


# ---------------------------------------------------------------------------------------
# Extraction (§3.1)
# ---------------------------------------------------------------------------------------
def sample_sensitivity(weight, grad):
    """S_ij = |theta_i * dL(x_j)/dtheta_i| for every element i of one parameter and one sample j
    (Zhong et al. §3.1): the first-order estimate of the loss change were theta_i zeroed."""
    return (weight * grad).abs()  # S_ij = |theta_i * dL(x_j)/dtheta_i|, Zhong et al. §3.1


def sensitivity(
    model,
    batches: Iterable[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    via_hooks: bool = False,
    summed: bool = False,
    on_totals=None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """S_i = sum_j |theta_i * dL(x_j)/dtheta_i| (Zhong et al. §3.1) for each parameter (or those
    in ``names``): :func:`sample_sensitivity` summed over the samples.

    Each batch must hold one sample (``input_ids`` and ``labels`` of shape ``[1, T]``): the
    absolute value is taken per sample, so a batch of several would sum their gradients first
    and give another (smaller) number. Gradients of the model are cleared before and after.

    A 4-bit weight cannot require grad, and needs none (docs/methods.md, "## 02 Parametric
    knowledge transfer", memory): the gradient of a linear layer's weight is g^T x, from the
    layer's input x and output gradient g, both caught by hooks, and it multiplies the
    dequantised weight. ``via_hooks`` takes every linear weight that way (the same numbers for a
    full-precision model; the tests compare the two). Only the running sums of the asked-for
    parameters are kept, in float32; with ``summed``, only each parameter's total (a scalar),
    which is all layer selection needs. ``on_totals(totals)`` is called with the running sums as
    soon as they are allocated (the dict this returns), so that a caller can weigh what they hold
    (:class:`kilib.transfer.extraction.LiveBytes`).

    ``checkpointing`` checkpoints the model's blocks for the pass
    (:func:`kilib.lm.training.checkpointed_blocks`): a block keeps only its input, and its
    activations (each hooked layer's x among them) are recomputed block by block in the backward
    pass. A 13B teacher on a 2,048-token sample then keeps about 1 GB of activations rather than
    15 GB. The numbers are the same (tested): a layer's x is saved as autograd saves its own
    tensors (:class:`_Tap`), so the checkpoint recomputes it, and a layer's forward calls are
    counted before the backward starts, so the recompute's calls add none."""
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
    if on_totals is not None:
        on_totals(totals)
    reduce = (lambda t: t.sum()) if summed else (lambda t: t)
    # A hooked weight's gradient for the sample: added into its running sum as soon as it is
    # complete (a layer called once per forward), so that no more than one layer's g^T x is
    # held at a time; a layer called more than once sums its gradient pieces first.
    weight_grads: dict[str, Any] = {}
    pending: dict[str, int] = {}  # per layer, its calls in this sample's forward whose gradient has not come
    in_backward = [False]  # a forward call while the backward runs is a checkpoint's recompute

    def on_grad(name, g, x):
        # dL/dW = g^T x for y = x W^T, summed over the sample's positions
        gw = g.reshape(-1, g.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
        weight_grads[name] = weight_grads[name] + gw if name in weight_grads else gw
        pending[name] -= 1
        if pending[name] == 0:
            with torch.no_grad():
                # S_i += S_ij
                totals[name] += reduce(sample_sensitivity(dense_weight(hooked[name].weight), weight_grads.pop(name)))

    def on_forward(name, module, args, output):
        if not output.requires_grad:
            return None
        if not in_backward[0]:
            pending[name] = pending.get(name, 0) + 1
        return _Tap.apply(output, args[0].detach(), functools.partial(on_grad, name))

    def inputs_require_grad(module, args, output):
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handles = [m.register_forward_hook(functools.partial(on_forward, n)) for n, m in hooked.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(inputs_require_grad))
    device = next(model.parameters()).device
    samples = 0
    span = contextlib.ExitStack()
    try:
        if checkpointing:
            span.enter_context(checkpointed_blocks(model))
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
            in_backward[0] = True
            out.loss.backward()
            in_backward[0] = False
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is not None:
                        totals[n] += reduce(sample_sensitivity(p.detach().float(), p.grad.float()))  # S_i += S_ij
                for n, gw in weight_grads.items():  # a call whose output the loss did not use sent no gradient
                    totals[n] += reduce(sample_sensitivity(dense_weight(hooked[n].weight), gw))
            samples += 1
    finally:
        span.close()
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        for n, p in all_params.items():
            if p.is_floating_point():
                p.requires_grad_(was[n])
    if samples == 0:
        raise KilibError("sensitivity needs at least one seed sample: pass the task's seed examples")
    return totals


class _Tap(torch.autograd.Function):
    """``y`` unchanged, with its backward handing the output gradient g and the layer's input x
    to ``on_grad(g, x)``. x is saved with ``save_for_backward``, as autograd saves its own
    tensors, so that gradient checkpointing frees and recomputes it with the block's."""

    @staticmethod
    def forward(ctx, y, x, on_grad):
        ctx.save_for_backward(x)
        ctx.on_grad = on_grad
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        ctx.on_grad(g, x)
        return g, None, None


def block_scores(scores: Mapping[str, Any], n_blocks: int, prefix: str = "model.layers.") -> list[float]:
    """Each block's summed sensitivity over all its parameters (layer norms included), from
    :func:`sensitivity`'s output (Zhong et al. §3.1, layer selection); ``prefix`` names the
    blocks (Llama: ``model.layers.``)."""
    totals = [0.0] * n_blocks
    for name, s in scores.items():
        if name.startswith(prefix):
            index = int(name[len(prefix) :].split(".", 1)[0])
            totals[index] += float(s.sum())  # S_block = sum of S_i over the block's parameters
    return totals


def select_layers(block_scores: Sequence[float], n: int) -> list[int]:
    """Indices of the ``n`` highest-scoring blocks, in their original order (ties go to the
    earlier block): the teacher's top L_student blocks, mapped in order onto the student's
    (Zhong et al. §3.1, layer selection)."""
    if not 1 <= n <= len(block_scores):
        raise KilibError(
            f"cannot keep {n} of {len(block_scores)} teacher blocks: the teacher needs at least as many "
            "blocks as the student"
        )
    ranked = sorted(range(len(block_scores)), key=lambda i: (-float(block_scores[i]), i))
    return sorted(ranked[:n])  # top-n by S_block, back in their original order


def best_submatrix(scores, rows: int, cols: int) -> tuple[int, int]:
    """Top-left corner of the ``rows`` x ``cols`` window of the 2-D ``scores`` with the largest
    sum; the first such window in row-major order (Zhong et al. §3.1, direct extraction of
    submatrices). ``scores`` may be a tensor or anything ``torch.as_tensor`` takes (a numpy array)."""
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as e:
            raise KilibError(
                f"scores must be a 2-D array of numbers, got {type(scores).__name__}: pass a tensor or a numpy array"
            ) from e
    if scores.dim() != 2:
        raise KilibError(f"scores must be 2-D (one score per weight of a matrix), got shape {tuple(scores.shape)}")
    height, width = scores.shape
    _check_fits(rows, cols, height, width)
    table = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    table[1:, 1:] = scores.double().cumsum(0).cumsum(1)  # summed-area table
    # every window's sum: argmax_(r,c) sum_{r<=i<r+rows, c<=j<c+cols} S_ij
    sums = table[rows:, cols:] - table[:-rows, cols:] - table[rows:, :-cols] + table[:-rows, :-cols]
    flat = int(torch.argmax(sums.flatten()))  # the first maximum, row-major
    return divmod(flat, sums.shape[1])


def _check_fits(rows: int, cols: int, height: int, width: int) -> None:
    if not (1 <= rows <= height and 1 <= cols <= width):
        raise KilibError(
            f"a {rows}x{cols} window does not fit a {height}x{width} matrix: the student's shape must be "
            "no larger than the teacher's"
        )


def extract_matrix(
    weight, scores, shape: Sequence[int], how: str = "sensitive", vocab_rows: bool = False, generator=None
):
    """The ``shape`` piece of the teacher matrix ``weight`` chosen by its sensitivity ``scores``.

    ``how``: ``sensitive`` the contiguous window with the largest summed sensitivity
    (:func:`best_submatrix`); ``top`` the rows and the columns with the largest sensitivity
    sums, each kept in their order (an ablation); ``random`` a uniformly drawn window (the
    control). ``vocab_rows`` (embeddings, output head): the first ``shape[0]`` rows, the
    student's vocabulary, are kept whole and only hidden columns are chosen."""
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
    names: Sequence[str] | None = None,
    generator=None,
) -> dict[str, Any]:
    """Extract(Theta_T; Theta_S; T) (Zhong et al. §3): every 2-D student parameter cut from the
    teacher (:func:`extract_matrix`), by name; with ``each(name, matrix)``, what it returns for
    each matrix as soon as that one is cut (so that a 7B student's matrices need not all be held
    at once). The student is read for its parameters' names and shapes only (a model on the meta
    device will do).

    ``names``: only these student parameters (a group of blocks, whose teacher sensitivities are
    all ``scores`` need hold). ``generator``: the random windows' draws, continued from call to
    call, so that groups cut in the student's parameter order draw what one call would; by
    default a new one seeded with ``seed``."""
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    wanted = set(names) if names is not None else None
    theirs = dict(teacher.named_parameters())
    out = {}
    for name, p in student.named_parameters():
        shape = logical_shape(p)
        if len(shape) != 2 or (wanted is not None and name not in wanted):
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


# ---------------------------------------------------------------------------------------
# Injection (§3.2)
# ---------------------------------------------------------------------------------------
def svd_factors(matrix, rank: int, oversample: int = 16, power_iterations: int = 6, seed: int = 0):
    """``(B, A)`` with ``B @ A`` the best rank-``rank`` approximation of ``matrix``:
    B = U_r diag(S_r) (out x r), A = V_r^T (r x in) (Zhong et al. §3.2).

    A matrix whose shorter side is at most :data:`EXACT_SVD_UP_TO` (every zoo model's) takes the
    exact SVD. A larger one (a 7B student's 4096 x 11008) takes a randomized truncated SVD (Halko,
    Martinsson and Tropp 2011, algorithms 4.4 and 5.1) on the matrix's device, in float64: the
    range of Y = M Omega for ``rank + oversample`` Gaussian columns Omega, refined by
    ``power_iterations`` rounds of Q = orth(M orth(M^T Q)), then the exact SVD of the small
    Q^T M = U' S V^T, with U = Q U'. Omega comes from a generator seeded with ``seed``: two calls
    give the same factors, and torch's global random state is left as it was. On a decaying
    spectrum ||M - B A||_F is the optimum's to within 1e-3 relative (tested)."""
    if not 1 <= rank <= min(matrix.shape):
        raise KilibError(f"rank {rank} is out of range for a {tuple(matrix.shape)} matrix")
    m = matrix.double()
    width = min(rank + oversample, min(m.shape))
    if min(m.shape) <= EXACT_SVD_UP_TO or width == min(m.shape):
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    else:
        draw = torch.Generator().manual_seed(seed)
        omega = torch.randn(m.shape[1], width, generator=draw, dtype=torch.float64).to(m.device)
        q = torch.linalg.qr(m @ omega).Q
        for _ in range(power_iterations):
            q = torch.linalg.qr(m @ torch.linalg.qr(m.T @ q).Q).Q
        small, s, vh = torch.linalg.svd(q.T @ m, full_matrices=False)
        u = q @ small  # U = Q U'
    return (u[:, :rank] * s[:rank]).to(matrix.dtype), vh[:rank].to(matrix.dtype)  # B = U_r diag(S_r), A = V_r^T


def lora_factors(student, rank: int):
    """``(name, matrix) -> (B, A)``: the rank-``rank`` factors (:func:`svd_factors`) of a matrix
    cut for the student's parameter ``name``, oriented as its LoRA takes them: of the transposed
    matrix for an embedding (peft's embedding update is (B A)^T)."""
    modules = dict(student.named_modules())

    def factors(name: str, matrix):
        matrix = matrix.to(torch.float32)
        embedding = isinstance(modules.get(name.removesuffix(".weight")), torch.nn.Embedding)
        return svd_factors(matrix.T if embedding else matrix, rank)

    return factors


def save_factors(factors: Mapping[str, tuple[Any, Any]], path: str | Path) -> None:
    """``{name: (B, A)}`` as one safetensors file (``<name>.B``, ``<name>.A``)."""
    save_file(
        {f"{n}.{part}": t.contiguous().cpu() for n, (b, a) in factors.items() for part, t in (("B", b), ("A", a))},
        str(path),
    )


def load_factors(path: str | Path) -> dict[str, tuple[Any, Any]]:
    """What :func:`save_factors` wrote: ``{name: (B, A)}``."""
    flat = load_file(str(path))
    return {n[:-2]: (flat[n], flat[n[:-2] + ".A"]) for n in flat if n.endswith(".B")}


def init_lora_from(model, extracted: Mapping[str, Any], rank: int, adapter: str = "default") -> list[str]:
    """Inject(Theta_S; Theta_T,extract) (Zhong et al. §3.2): W* = W - B A + B A, the student
    unchanged at step 0 (the paper's "initially equivalent").

    Starts each LoRA of the peft ``model`` whose base weight has an extracted matrix at that
    matrix's rank-``rank`` factors (B scaled by 1/scaling, so the update is B A; a value may be
    the factors themselves, ``(B, A)`` from :func:`lora_factors`), and adds a frozen second
    adapter holding -B A, whether W is in full precision or in 4-bit (where W - B A could not be
    stored without requantising). Embedding LoRAs take the factors of the transposed matrix
    (peft's embedding update is (B A)^T). Returns the names of the weights it initialised."""
    if RESIDUAL in model.peft_config:
        raise KilibError("this model's LoRA was already started from extracted factors: attach a fresh LoRA first")
    if model.peft_config[adapter].r != rank:
        raise KilibError(f"the LoRA has rank {model.peft_config[adapter].r}, not {rank}: attach it with r={rank}")
    dropout = getattr(model.peft_config[adapter], "lora_dropout", 0.0) or 0.0
    if dropout > 0:
        # the trained adapter and the frozen -B A one would draw different dropout masks in training,
        # so W - B A + B A would not be W at step 0
        raise KilibError(
            f"the LoRA has dropout {dropout:g}, which breaks the start's equality in training: attach it with "
            "lora_dropout=0"
        )
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
            # the trained adapter starts at (B, A), the frozen one at (-B, A): W - B A + B A = W
            for (lora_a, lora_b), sign in zip(pairs, (1.0, -1.0)):
                lora_a.copy_(a)
                lora_b.copy_(sign * b)
        done.append(name)
    model.base_model.set_adapter([adapter, RESIDUAL])
    for n, p in model.named_parameters():
        if f".{RESIDUAL}" in n:
            p.requires_grad_(False)
    return done
