"""How notebook 03's tiny key-value table and its two cross-attentions were chosen.

    python tools/calm_dev.py

Nothing here trains a composition on KV arithmetic or looks at its evaluation rows.

1. The anchor's arithmetic. llama-m trained on numeric arithmetic over the tiny world's own table
   (values 1..60, 2-3 terms) and over values 1..16 (two terms, the tiny preset's stage), scored
   on held-out expressions and on its own training expressions.
2. A copying control. m_A learns substitution over 64 keys; the composition (llama-m anchor,
   untrained on arithmetic) is trained to substitute over the training keys and asked on
   expressions over the other keys, which only m_A can answer. With 20% and with 50% of the keys
   for training, and with and without rotary positions in the cross-attention.

Round 2 (``python tools/calm_dev.py --round 2``, after the first tiny results were known; it
appends its lines), again without the held-out keys:

3. The anchor's stage at learning rates 3e-3 (round 1's) and 1e-3: the size of its residual
   stream (mean norm of each block's output on KV prompts, beside the zoo model's), its own
   training expressions, and the copying control of the tiny preset over it (rotary).
4. KV arithmetic on a split of the *training* keys: the composition (rotary) trained on
   expressions over 24 of the 32 training keys, scored on those rows and on expressions over the
   other 8; beside it the anchor given those 8 keys' values written in.

Round 3 (``--round 3``, after the second tiny results; appends), again without the held-out keys:
the paper's keys are single tokens of PaLM2-XXS's vocabulary, the world generator's are random
strings that the tiny tokenizer splits into one to six tokens.

5. A linear probe of m_A after its stage (softmax regression on each composed block's output at
   each key's last token, in KV prompts): fitted on 24 of the 32 training keys, scored on the
   other 8. A composition can only read a held-out key's value if m_A's states hold it in a form
   that carries over from the keys it trained on. For random-string keys, single-token keys
   ("vocabulary") and single tokens in a digit's place ("aligned").
6. KV arithmetic on the split of the training keys (as 4; with 128 keys, 48 and 16 of the 64),
   with single-token keys ("vocabulary") and single tokens in a digit's place ("aligned"), with
   the preset's composition budget and with every m_A block composed for 30 epochs; then, after the
   tiny run of the chosen preset, with weight decay on the bridges (1.0 and 0.1).

Writes results/tiny/calm_dev.jsonl, one line per run.
"""

import argparse
import copy
import dataclasses
import json
import random

from kilib.calm import presets, study, tasks
from kilib.calm.probe import composed_blocks, key_states, linear_probe
from kilib.lm.models import load_causal_lm, load_tokenizer, padding_side
from kilib.lm.training import sft_dataset, train
from kilib.runtime import results_root, set_threads


def table_of(config: presets.CalmConfig):
    return tasks.kv_table(config, tokenizer=load_tokenizer(study.study_inputs(config).anchor))


def accuracy(answers) -> float:
    return sum(a["correct"] for a in answers) / len(answers)


def anchor_stage(config: presets.CalmConfig, what: str) -> dict:
    inputs = study.study_inputs(config)
    folder = study.prepared(inputs, config, "anchor")
    model, tokenizer = load_causal_lm(folder)
    seen = copy.deepcopy(inputs)
    seen.rows["numeric"]["eval"] = inputs.rows["numeric"]["stage"][:150]
    return {
        "run": "anchor stage",
        "table": what,
        "examples": config.anchor_stage.examples,
        "epochs": config.anchor_stage.train.epochs,
        "stage_seconds": round(study.stage_log(inputs, config, "anchor")["seconds"], 1),
        "held_out": accuracy(study.evaluate(model, tokenizer, inputs, config, tasks=("numeric",))),
        "own_training_expressions": accuracy(study.evaluate(model, tokenizer, seen, config, tasks=("numeric",))),
    }


def copying_control(fraction: float, rotary: bool) -> dict:
    base = presets.PRESETS["tiny"]
    config = dataclasses.replace(
        base,
        keys="random",
        every=2,
        kv_keys=64,
        kv_value_max=64,
        train_fraction=fraction,
        anchor_stage=presets.Stage(0),
        control_examples=0,
        train_examples=300,
        augment_stage=presets.Stage(3000, dataclasses.replace(base.augment_stage.train, epochs=4)),
    )
    inputs = study.study_inputs(config)
    world, table = table_of(config)
    train_keys, eval_keys = set(inputs.keys["train"]), set(inputs.keys["eval"])
    rows = [
        {"expression": r["prompt"], "target": tasks.substitute(r["prompt"], table)}
        for r in world.kv_substitution(6000, seed=5).to_list()
    ]

    def over(keys):
        return [r for r in rows if set(r["expression"].split()[::2]) <= keys]

    trained, asked = over(train_keys)[:400], over(eval_keys)[:150]
    probe = copy.deepcopy(inputs)
    probe.rows["substitution"]["eval"] = asked
    composed, tokenizer = study.load_composition(probe, config, "trained", 0, rotary)
    result = train(
        composed,
        sft_dataset(tokenizer, tasks.sft_rows("substitution", trained)),
        dataclasses.replace(config.train, epochs=15),
        "/tmp/kilib-calm-dev",
        tokenizer=tokenizer,
        resume=False,
    )
    return {
        "run": "copying control",
        "keys": 64,
        "training_keys": len(train_keys),
        "rotary": rotary,
        "training_rows": len(trained),
        "final_loss": result.losses[-1]["loss"],
        "held_out_keys_accuracy": accuracy(study.evaluate(composed, tokenizer, probe, config, tasks=("substitution",))),
    }


def _anchor_config(
    lr: float,
    every: int = 2,
    epochs: int = 10,
    kv_lr: float = 1e-3,
    keys: str = "random",
    kv_keys: int = 64,
    weight_decay: float = 0.0,
) -> presets.CalmConfig:
    """The tiny preset as rounds 1 and 2 had it (every 2nd m_A block, 10 epochs at 1e-3, the
    world's random keys), with the anchor's stage at ``lr`` and the given changes."""
    tiny = presets.PRESETS["tiny"]
    return dataclasses.replace(
        tiny,
        keys=keys,
        kv_keys=kv_keys,
        every=every,
        anchor_stage=presets.Stage(tiny.anchor_stage.examples, dataclasses.replace(tiny.anchor_stage.train, lr=lr)),
        train=dataclasses.replace(tiny.train, epochs=epochs, lr=kv_lr, weight_decay=weight_decay),
    )


def residual_norms(path: str, inputs: study.CalmInputs) -> list[float]:
    """Mean norm of each block's output over the tokens of 32 KV prompts (full precision)."""
    import torch

    from kilib.lm.training import render_prompt

    model, tokenizer = load_causal_lm(path, quantization="none")
    with padding_side(tokenizer, "right"):
        batch = tokenizer(
            [
                render_prompt(tokenizer, tasks.task_prompt("kv", r["expression"]))
                for r in inputs.rows["kv"]["train"][:32]
            ],
            return_tensors="pt",
            padding=True,
        )
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[1:-1]  # block outputs before the final norm
    tokens = batch["attention_mask"].bool()
    return [round(h[tokens].norm(dim=-1).mean().item(), 1) for h in hidden]


def anchor_lr(lr: float) -> dict:
    config = _anchor_config(lr)
    inputs = study.study_inputs(config)
    folder = study.prepared(inputs, config, "anchor")
    model, tokenizer = load_causal_lm(folder)
    seen = copy.deepcopy(inputs)
    seen.rows["numeric"]["eval"] = inputs.rows["numeric"]["stage"][:150]
    log = study.stage_log(inputs, config, "anchor")
    composed, tokenizer = study.load_composition(inputs, config, "trained", 0, True)
    train(
        composed,
        sft_dataset(tokenizer, tasks.sft_rows(tasks.CONTROL, inputs.rows[tasks.CONTROL]["train"])),
        config.train,
        "/tmp/kilib-calm-dev",
        tokenizer=tokenizer,
        resume=False,
    )
    return {
        "run": "anchor stage lr",
        "lr": lr,
        "epochs": config.anchor_stage.train.epochs,
        "final_loss": log["losses"][-1]["loss"],
        "own_training_expressions": accuracy(study.evaluate(model, tokenizer, seen, config, tasks=("numeric",))),
        "residual_norm": residual_norms(folder, inputs),
        "zoo_residual_norm": residual_norms(inputs.anchor, inputs),
        "copying_control_held_out_keys": accuracy(
            study.evaluate(composed, tokenizer, inputs, config, tasks=(tasks.CONTROL,))
        ),
    }


def training_key_split(config: presets.CalmConfig):
    """(inputs, table, rows over 24 of the training keys, rows over the other 8): nothing held out."""
    from kilib.tiny.world import evaluate_arithmetic

    inputs = study.study_inputs(config)
    world, table = table_of(config)
    keys = sorted(inputs.keys["train"])
    random.Random(0).shuffle(keys)
    fit_keys, dev_keys = set(keys[: 3 * len(keys) // 4]), set(keys[3 * len(keys) // 4 :])  # 24 and 8 of 32
    rows = [
        {"expression": r["prompt"], "target": str(evaluate_arithmetic(tasks.substitute(r["prompt"], table)))}
        for r in world.kv_arithmetic(3072, seed=7, split="train").to_list()
    ]

    def over(keys):
        return [r for r in rows if set(r["expression"].split()[::2]) <= keys]

    return inputs, table, over(fit_keys), over(dev_keys)


def kv_on_training_keys(
    lr: float,
    every: int = 2,
    epochs: int = 10,
    kv_lr: float = 1e-3,
    keys: str = "random",
    rotary: bool = True,
    kv_keys: int = 64,
    weight_decay: float = 0.0,
) -> dict:
    config = _anchor_config(lr, every, epochs, kv_lr, keys, kv_keys, weight_decay)
    inputs, table, fit, dev = training_key_split(config)
    fit, dev = fit[: config.train_examples], dev[:150]
    probe = copy.deepcopy(inputs)
    probe.rows["kv"]["eval"] = dev
    probe.rows["numeric"]["eval"] = [
        {"expression": tasks.substitute(r["expression"], table), "target": r["target"]} for r in dev
    ]
    probe.rows[tasks.KV_SEEN]["eval"] = fit[:150]
    anchor, tokenizer = load_causal_lm(study.prepared(inputs, config, "anchor"))
    composed, tokenizer = study.load_composition(inputs, config, "trained", 0, rotary)
    result = train(
        composed,
        sft_dataset(tokenizer, tasks.sft_rows("kv", fit)),
        config.train,
        "/tmp/kilib-calm-dev",
        tokenizer=tokenizer,
        resume=False,
    )
    out = (
        ({} if keys == "random" else {"keys": keys})
        | ({} if kv_keys == 64 else {"kv_keys": kv_keys})
        | ({"weight_decay": weight_decay} if weight_decay else {})
    )
    return {
        "run": "kv on training keys",
        **out,
        "anchor_lr": lr,
        "every": config.every,
        "epochs": config.train.epochs,
        "lr": config.train.lr,
        "rotary": rotary,
        "fit_keys": len(inputs.keys["train"]) * 3 // 4,
        "dev_keys": len(inputs.keys["train"]) - len(inputs.keys["train"]) * 3 // 4,
        "final_loss": result.losses[-1]["loss"],
        "calm_fit_rows": accuracy(study.evaluate(composed, tokenizer, probe, config, tasks=(tasks.KV_SEEN,))),
        "calm_dev_keys": accuracy(study.evaluate(composed, tokenizer, probe, config, tasks=("kv",))),
        "anchor_dev_keys": accuracy(study.evaluate(anchor, tokenizer, probe, config, tasks=("kv",))),
        "anchor_values_written_in": accuracy(study.evaluate(anchor, tokenizer, probe, config, tasks=("numeric",))),
    }


def value_probe(keys: str) -> dict:
    """calm.linear_probe on m_A's composed block outputs at each key's last token (calm.key_states,
    m_A in 4-bit as composed): fitted on the 24 keys' rows, scored on the 8 others'."""
    import torch

    config = _anchor_config(1e-3, keys=keys)
    inputs, table, fit, dev = training_key_split(config)
    model, tokenizer = load_causal_lm(study.prepared(inputs, config, "augment"))
    blocks = composed_blocks(model, inputs.anchor, config.every)
    substitution = accuracy(study.evaluate(model, tokenizer, inputs, config, tasks=("substitution",)))
    (fit_x, fit_keys), (dev_x, dev_keys) = (key_states(model, tokenizer, rows[:300], blocks) for rows in (fit, dev))
    fit_y, dev_y = (torch.tensor([table[k] for k in keys]) for keys in (fit_keys, dev_keys))
    scores = [linear_probe(fx, fit_y, dx, dev_y) for fx, dx in zip(fit_x, dev_x)]
    return {
        "run": "m_A value probe",
        "keys": keys,
        "substitution_accuracy": substitution,
        "blocks": blocks,
        "fit_keys": 24,
        "dev_keys": 8,
        "fit_occurrences": len(fit_y),
        "dev_occurrences": len(dev_y),
        "chance": round(1 / config.kv_value_max, 3),
        "probe": [{"fit": round(p["fit"], 3), "dev": round(p["test"], 3)} for p in scores],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--round", type=int, choices=(1, 2, 3), default=1)
    round_ = parser.parse_args().round
    set_threads()
    out = results_root() / "tiny" / "calm_dev.jsonl"
    if round_ == 1:
        tiny = dataclasses.replace(presets.PRESETS["tiny"], keys="random")
        world_table = dataclasses.replace(
            tiny,
            kv_keys=40,
            kv_value_max=60,
            kv_terms=(2, 3),
            train_fraction=0.2,
            control_examples=0,
            anchor_stage=presets.Stage(5000, dataclasses.replace(tiny.anchor_stage.train, epochs=2, lr=1e-3)),
        )
        runs = [
            lambda: anchor_stage(world_table, "the world's: 40 keys, values 1..60, 2-3 terms"),
            lambda: anchor_stage(
                dataclasses.replace(
                    tiny, anchor_stage=presets.Stage(618, dataclasses.replace(tiny.anchor_stage.train, lr=3e-3))
                ),
                "the tiny preset's: values 1..16, two terms",
            ),
        ]
        runs += [lambda f=f, r=r: copying_control(f, r) for f in (0.2, 0.5) for r in (False, True)]
    elif round_ == 3:
        runs = [lambda k=k: value_probe(k) for k in ("random", "vocabulary")]
        runs += [lambda r=r: kv_on_training_keys(1e-3, keys="vocabulary", rotary=r) for r in (True, False)]
        runs += [
            lambda: value_probe("aligned"),
            lambda: kv_on_training_keys(1e-3, keys="aligned"),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=30, keys="aligned"),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=10, kv_lr=3e-3, keys="aligned"),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=30, kv_lr=3e-3, keys="aligned"),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=30, keys="vocabulary"),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=30, keys="aligned", kv_keys=128),
        ]
        # after the tiny run of this preset (its compositions fitted their training keys, not held-out ones):
        runs += [
            lambda wd=wd: kv_on_training_keys(1e-3, every=1, epochs=30, keys="aligned", weight_decay=wd)
            for wd in (1.0, 0.1)
        ]
    else:
        runs = [lambda lr=lr: anchor_lr(lr) for lr in (3e-3, 1e-3)]
        runs += [
            lambda: kv_on_training_keys(3e-3),
            lambda: kv_on_training_keys(1e-3),
            lambda: kv_on_training_keys(1e-3, every=1, epochs=30, kv_lr=3e-3),
        ]
    lines = []
    for run in runs:
        lines.append(json.dumps({"round": round_, **run()}))
        print(lines[-1], flush=True)
    if round_ == 1:
        out.write_text("\n".join(lines) + "\n")
    else:
        with out.open("a") as f:
            f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")
