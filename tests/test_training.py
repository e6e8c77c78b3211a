"""SFT masking, LM blocks and the training loop (resume included)."""

import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import make_metaspace_tokenizer, make_model, make_tokenizer
from tokenizers import processors
from transformers import PreTrainedTokenizerFast, TrainerCallback

from kilib.lm import training
from kilib.lm.models import WrappedLM
from kilib.lm.training import (
    IGNORE_INDEX,
    PackingCollator,
    TrainConfig,
    check_packing,
    checkpointing_on,
    collator,
    freeze_all_but,
    latest_checkpoint,
    lm_dataset,
    render_answer,
    render_prompt,
    resolve_optimizer,
    sft_dataset,
    tokenize_sft,
    train,
)
from kilib.runtime import KilibError


@pytest.mark.parametrize("chat", [True, False])
def test_prompt_tokens_carry_no_loss(chat):
    tok = make_tokenizer(chat=chat)
    prompt, answer = "who won the cup?", "the rovers"
    ex = tokenize_sft(tok, prompt, answer)
    prompt_ids = tok(render_prompt(tok, prompt)).input_ids
    n = len(prompt_ids)
    assert ex["input_ids"][:n] == prompt_ids
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    assert ex["labels"][n:] == ex["input_ids"][n:] and len(ex["labels"]) > n
    assert ex["input_ids"][-1] == tok.eos_token_id  # the answer ends the turn
    assert tok.decode(ex["input_ids"][n:], skip_special_tokens=True).strip() == answer

    # The model's loss equals cross-entropy over the answer tokens alone, computed directly.
    model = make_model("llama", tok)
    ids = torch.tensor([ex["input_ids"]])
    out = model(input_ids=ids, labels=torch.tensor([ex["labels"]]))
    logp = torch.log_softmax(out.logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    answer_positions = range(n - 1, len(targets))
    direct = -torch.stack([logp[t, targets[t]] for t in answer_positions]).mean()
    assert out.loss.item() == pytest.approx(direct.item(), rel=1e-5)
    # ...and changing the prompt's own next-token targets cannot change it.
    prompt_only = -torch.stack([logp[t, targets[t]] for t in range(n - 1)]).mean()
    assert abs(prompt_only.item() - direct.item()) > 1e-3


def test_long_examples_cut_the_prompt_not_the_answer():
    tok = make_tokenizer()
    ex = tokenize_sft(tok, "who won " * 50, "the rovers", max_length=20)
    assert len(ex["input_ids"]) == 20
    assert (
        tok.decode(
            [i for i, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX], skip_special_tokens=True
        ).strip()
        == "the rovers"
    )
    # The prompt loses its middle: its start (an instruction) and its end (the question) survive.
    prompt = "Name the winner. " + "the cup went on " * 40 + "who won the cup"
    full = tokenize_sft(tok, prompt, "the rovers", max_length=1000)
    cut = tokenize_sft(tok, prompt, "the rovers", max_length=40)
    n_prompt = sum(label == IGNORE_INDEX for label in full["labels"])
    room = 40 - (len(full["input_ids"]) - n_prompt)  # what the answer leaves to the prompt
    assert len(cut["input_ids"]) == 40
    assert cut["input_ids"][: room // 2] == full["input_ids"][: room // 2]  # BOS, template, instruction
    assert cut["input_ids"][room // 2 :] == full["input_ids"][n_prompt - (room - room // 2) :]  # question, answer
    assert "name the winner" in tok.decode(cut["input_ids"][: room // 2]).lower()


def test_bad_training_data_is_a_clear_error():
    tok = make_tokenizer()
    with pytest.raises(KilibError, match="empty answer"):
        tokenize_sft(tok, "q", "  ")
    with pytest.raises(KilibError, match="no \\(prompt, answer\\) pairs"):
        sft_dataset(tok, [])
    with pytest.raises(KilibError, match="lack field"):
        sft_dataset(tok, [{"question": "q", "answer": "a"}])
    with pytest.raises(KilibError, match="document 1 is empty"):
        lm_dataset(tok, ["the cup", ""], block_size=8)


def test_lm_blocks_cover_the_stream_and_mask_padding():
    tok = make_tokenizer()
    texts = ["the rovers won the cup", "the final was 3-1"]
    ds = lm_dataset(tok, texts, block_size=8)
    stream = []
    for t in texts:
        stream += tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]
    got = [i for row in ds for i, m in zip(row["input_ids"], row["attention_mask"]) if m]
    assert got == stream
    last = ds[len(ds) - 1]
    assert all(label == IGNORE_INDEX for label, m in zip(last["labels"], last["attention_mask"]) if not m)
    assert tok.bos_token_id is None  # the zoo's kind of tokenizer: no BOS, windows as above

    backend = tok.backend_tokenizer  # a tokenizer that starts every input with BOS, as Llama's
    bos = tok.convert_tokens_to_ids("<|user|>")
    backend.post_processor = processors.TemplateProcessing(single="<|user|> $A", special_tokens=[("<|user|>", bos)])
    llama_like = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|eos|>", unk_token="<|unk|>", bos_token="<|user|>"
    )
    rows = lm_dataset(llama_like, texts, block_size=8)
    assert all(row["input_ids"][0] == bos for row in rows)
    assert [i for row in rows for i, m in zip(row["input_ids"][1:], row["attention_mask"][1:]) if m] == stream


class _Crash(Exception):
    pass


class CrashAfterSaving(TrainerCallback):
    """Stops a run right after its checkpoint at ``step`` is saved."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_training_lowers_the_loss_and_resumes(tmp_path, family):
    tok = make_tokenizer()
    data = sft_dataset(tok, [{"prompt": "who won the cup?", "answer": "the rovers"}] * 8)
    config = TrainConfig(epochs=3, batch_size=2, lr=1e-2, progress=False, logging_steps=1)
    straight = train(make_model(family, tok), data, config, tmp_path / "straight", tokenizer=tok)
    assert straight.steps == 12 and straight.losses[-1]["loss"] < straight.losses[0]["loss"]
    with pytest.raises(_Crash):  # the same run, stopped after its second epoch's checkpoint
        train(make_model(family, tok), data, config, tmp_path / "run", tokenizer=tok, callbacks=[CrashAfterSaving(8)])
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-8"
    # The rerun resumes from the checkpoint (weights, optimizer, schedule, log): a model initialised
    # differently logs the first 8 losses of the uninterrupted run, and the last 4 as well, which
    # it would not with any weight left unloaded.
    resumed = train(make_model(family, tok, seed=1), data, config, tmp_path / "run", tokenizer=tok)
    assert resumed.steps == 12 and resumed.losses[:8] == straight.losses[:8]
    assert [h["loss"] for h in resumed.losses[8:]] == pytest.approx([h["loss"] for h in straight.losses[8:]], rel=1e-4)


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:100]),
        lambda c: (c / "optimizer.pt").unlink(),
        lambda c: (c / "trainer_state.json").unlink(),
        lambda c: (c / "kilib-checkpoint.json").unlink(),  # a save cut off before its record
    ],
    ids=["truncated-optimizer", "no-optimizer", "no-state", "unfinished"],
)
def test_a_damaged_checkpoint_is_said_removed_and_not_resumed(tmp_path, capsys, damage):
    """A rerun never resumes from a checkpoint that is incomplete: it says so in one line, removes
    it and starts over, giving the uninterrupted run's losses (a fresh optimizer would not)."""

    tok = make_tokenizer()
    data = sft_dataset(tok, [{"prompt": "who won the cup?", "answer": "the rovers"}] * 8)
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, progress=False, logging_steps=1)
    straight = train(make_model("llama", tok), data, config, tmp_path / "straight", tokenizer=tok)
    with pytest.raises(_Crash):
        train(make_model("llama", tok), data, config, tmp_path / "run", tokenizer=tok, callbacks=[CrashAfterSaving(4)])
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert latest_checkpoint(tmp_path / "run") == checkpoint
    damage(checkpoint)
    capsys.readouterr()
    again = train(make_model("llama", tok), data, config, tmp_path / "run", tokenizer=tok)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kilib:")]
    assert len(err) == 1 and "checkpoint-4 cannot resume the run" in err[0]
    assert again.steps == 8 and again.losses == straight.losses


def test_only_parameters_that_require_grad_train(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", tok)
    freeze_all_but(model, ["lm_head"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = sft_dataset(tok, [{"prompt": "who won?", "answer": "the rovers"}] * 4)
    train(model, data, TrainConfig(epochs=1, lr=1e-2, progress=False, save_every_epoch=False), tmp_path, tokenizer=tok)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    assert changed == {"lm_head.weight"}
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(KilibError, match="no parameter requires grad"):
        train(model, data, TrainConfig(progress=False), tmp_path, tokenizer=tok)


def test_collator_pads_labels_with_ignore_index():
    tok = make_tokenizer()
    rows = [tokenize_sft(tok, "who?", "the rovers"), tokenize_sft(tok, "who won the cup in the final?", "the rovers")]
    batch = collator(tok)(rows)
    short = len(rows[0]["input_ids"])
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, short:] == 0).all()


_PACK_ROWS = [
    ("who?", "the rovers"),
    ("who won the cup in the final?", "the rovers won it"),
    ("the year?", "3-1"),
    ("who won the cup in the year of the final?", "the rovers"),
    ("won?", "it"),
]


def test_packing_rows_hold_every_example_once_within_the_width():
    packer = PackingCollator(make_tokenizer(), row_tokens=10)
    lengths = [7, 3, 9, 2, 2, 12, 5, 1]
    rows = packer.rows(lengths)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 12 for r in rows)  # the longest example sets the width
    # first-fit decreasing by hand, longest first into the first row with room: 12 | 9+3 | 7+5 | 2+2+1
    assert rows == [[0, 6], [1, 2], [3, 4, 7], [5]]


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_packed_batch_has_the_padded_batch_loss_and_gradients(family):
    tok = make_tokenizer()
    rows = [tokenize_sft(tok, p, a) for p, a in _PACK_ROWS]
    padded, packed = collator(tok)(rows), PackingCollator(tok, row_tokens=24)(rows)
    assert packed["input_ids"].shape[0] < len(rows) and packed["input_ids"].numel() < padded["input_ids"].numel()
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()  # no answer token lost
    grads = []
    for batch in (padded, packed):
        model = make_model(family, tok)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_packing_is_refused_for_a_model_that_lets_packed_examples_see_each_other(tmp_path):
    class IgnoresPositions(torch.nn.Module):  # attention over the whole row, as a model without packing support
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    tok = make_tokenizer()
    check_packing(make_model("llama", tok))
    with pytest.raises(KilibError, match="does not keep packed examples apart.*padding collator"):
        check_packing(IgnoresPositions(make_model("llama", tok)))
    # in bfloat16 a packed row rounds otherwise than the rows alone (here by about 3e-3 of the logits'
    # scale, over a 1e-3 bound), and is still accepted; attention across the packed examples is not
    bf16 = make_model("llama", tok).to(torch.bfloat16)
    check_packing(bf16)
    with pytest.raises(KilibError, match="does not keep packed examples apart"):
        check_packing(IgnoresPositions(bf16))


def test_training_with_packing_lowers_the_loss_and_keeps_the_cache_setting(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", tok)
    assert model.config.use_cache
    data = sft_dataset(tok, [{"prompt": p, "answer": a} for p, a in _PACK_ROWS] * 4)
    result = train(
        model,
        data,
        TrainConfig(epochs=4, batch_size=5, lr=1e-2, progress=False, logging_steps=1, save_every_epoch=False),
        tmp_path,
        data_collator=PackingCollator(tok, row_tokens=32),
    )
    assert result.losses[-1]["loss"] < result.losses[0]["loss"] and model.config.use_cache


_THREADS_SCRIPT = r"""
import hashlib, sys, tempfile
import torch
if sys.argv[1] == "caller-sets-threads":
    torch.set_num_threads(torch.get_num_threads())  # what a notebook's set_threads() does
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, default_data_collator
from kilib.lm.training import TrainConfig, train

cfg = LlamaConfig(vocab_size=512, hidden_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=256, max_position_embeddings=512, tie_word_embeddings=False)
ids = torch.randint(0, 512, (8, 256), generator=torch.Generator().manual_seed(1)).tolist()
data = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 256] * 8})
torch.manual_seed(0)
raw = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
x = torch.tensor(ids[:4])
raw(input_ids=x, labels=x).loss.backward()
raw_hash = hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in raw.parameters())).hexdigest()
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
train(model, data, TrainConfig(max_steps=2, batch_size=4, lr=1e-3, save_every_epoch=False, progress=False),
      tempfile.mkdtemp(), data_collator=default_data_collator)
print(raw_hash, hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def test_training_does_not_depend_on_whether_the_caller_set_torch_threads():
    """A process that called torch.set_num_threads (a notebook) and one that did not (a script)
    train to the same weights with the same thread count. Without the fix in ``train`` they did
    not: torch computes some backward passes in another order (the raw gradients below may
    differ; on the 2-core CI machine they do), and a tiny-zoo model built by a script differed
    from the notebook's build."""
    out = {
        mode: subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        for mode in ("caller-sets-threads", "caller-does-not")
    }
    (raw_a, trained_a), (raw_b, trained_b) = out.values()
    print("raw gradients differ without kilib:", raw_a != raw_b)
    assert trained_a == trained_b


LLAMA2_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", ["tulu", "llama-2-chat"])
def test_a_templated_answer_is_tokenised_as_it_follows_the_template(template):
    """Llama's SentencePiece tokenizer starts a text tokenised on its own with a word-start mark
    (▁). After the template's assistant opening (Tulu's "<|assistant|>\\n", Llama-2-chat's
    "[/INST] ") that mark is wrong or doubled, so the training example must hold the tokens of
    the joined text; a plain prompt's answer still starts a new word."""
    from kilib.transfer.tasks import TULU_CHAT_TEMPLATE

    prompt, answer = "Question: who won the cup?", "Answer: the rovers won it."
    texts = {
        "tulu": f"<|user|>\n{prompt}\n<|assistant|>\n{answer}</s>\n",
        "llama-2-chat": f"[INST] {prompt} [/INST] {answer} </s>",
    }
    plain = "Question: who won the cup?\nAnswer: the rovers won it."
    tok = make_metaspace_tokenizer(
        [texts[template], plain] * 20,
        special=("<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"),
        legacy=template == "llama-2-chat",
    )
    plain_answer = tokenize_sft(tok, "Question: who won the cup?\nAnswer:", "the rovers won it.")
    assert tok.decode(plain_answer["input_ids"]) == plain + "</s>"
    tok.chat_template = TULU_CHAT_TEMPLATE if template == "tulu" else LLAMA2_CHAT
    ex = tokenize_sft(tok, prompt, answer)
    assert render_prompt(tok, prompt) + render_answer(tok, prompt, answer) == texts[template]
    assert ex["input_ids"] == tok(texts[template]).input_ids  # the joined text's tokens
    n = ex["labels"].count(IGNORE_INDEX)
    assert ex["input_ids"][:n] == tok(render_prompt(tok, prompt)).input_ids  # prompt tokens carry no loss
    alone = tok(render_answer(tok, prompt, answer), add_special_tokens=False).input_ids
    assert alone != ex["input_ids"][n:]  # what tokenising the answer on its own gives instead
    first = tok.convert_ids_to_tokens(ex["input_ids"][n:])[0]
    assert first.startswith("Answer" if template == "tulu" else "▁Answer"), first


# ---------------------------------------------------------------------------------------
# The optimizer and gradient checkpointing
# ---------------------------------------------------------------------------------------
class RecordArgs(TrainerCallback):
    def __init__(self):
        self.optim = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.optim = str(args.optim.value if hasattr(args.optim, "value") else args.optim)


class NoCheckpointing(WrappedLM):
    """A kilib wrapper that defines no gradient checkpointing."""

    wrapped = "base"

    def __init__(self, base):
        super().__init__()
        self.base = base


def test_auto_optimizer_is_fused_adamw_on_cuda_and_foreach_adamw_on_the_cpu(monkeypatch):
    assert resolve_optimizer("auto", "cuda") == "adamw_torch_fused"
    assert resolve_optimizer("auto", torch.device("cuda", 0)) == "adamw_torch_fused"
    assert resolve_optimizer("auto", "cpu") == "adamw_torch"
    for device in ("cpu", "cuda"):
        assert resolve_optimizer("adamw_torch", device) == "adamw_torch"  # an explicit name is kept
        assert resolve_optimizer("adafactor", device) == "adafactor"
    assert TrainConfig.__dataclass_fields__["optimizer"].default == "auto"

    monkeypatch.setattr(training, "cuda_available", lambda: False)
    assert TrainConfig().optimizer == "adamw_torch"  # the CPU profiles' optimizer, and their cache keys, as before
    assert dataclasses.asdict(TrainConfig(lr=1e-3))["optimizer"] == "adamw_torch"
    monkeypatch.setattr(training, "cuda_available", lambda: True)
    assert TrainConfig().optimizer == "adamw_torch_fused"
    assert TrainConfig(optimizer="adamw_torch").optimizer == "adamw_torch"
    assert dataclasses.replace(TrainConfig(), lr=1e-3).optimizer == "adamw_torch_fused"


def test_training_on_the_cpu_uses_foreach_adamw(tmp_path):
    tok = make_tokenizer()
    data = sft_dataset(tok, [{"prompt": "who won?", "answer": "the rovers"}] * 2)
    record = RecordArgs()
    config = TrainConfig(max_steps=1, progress=False, save_every_epoch=False)
    train(make_model("llama", tok), data, config, tmp_path, tokenizer=tok, callbacks=[record])
    assert record.optim == ("adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch")


def test_gradient_checkpointing_is_on_or_refused(tmp_path):
    from kilib.memory.model import attach_memory

    tok = make_tokenizer()
    data = sft_dataset(tok, [{"prompt": "who won?", "answer": "the rovers"}] * 2)
    config = TrainConfig(max_steps=1, progress=False, save_every_epoch=False, gradient_checkpointing=True)
    unsupported = NoCheckpointing(make_model("llama", tok))
    freeze_all_but(unsupported, ["lm_head"])
    with pytest.raises(KilibError, match="NoCheckpointing cannot checkpoint gradients.*gradient_checkpointing=False"):
        train(unsupported, data, config, tmp_path / "refused", tokenizer=tok)
    assert not (tmp_path / "refused").exists()  # refused before anything ran

    memory = attach_memory(make_model("llama", tok))
    result = train(memory, data, config, tmp_path / "memory", tokenizer=tok)
    assert result.steps == 1 and checkpointing_on(memory)
