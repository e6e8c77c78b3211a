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

Writes results/tiny/calm_dev.jsonl, one line per run.
"""

import copy
import dataclasses
import json

from kilib import calm as C
from kilib.models import load_causal_lm
from kilib.runtime import results_root
from kilib.training import set_threads, sft_dataset, train


def accuracy(answers) -> float:
    return sum(a["correct"] for a in answers) / len(answers)


def anchor_stage(config: C.CalmConfig, what: str) -> dict:
    inputs = C.study_inputs("tiny", config)
    folder = C.prepared(inputs, config, "anchor")
    model, tokenizer = load_causal_lm(folder)
    seen = copy.deepcopy(inputs)
    seen.rows["numeric"]["eval"] = inputs.rows["numeric"]["stage"][:150]
    return {"run": "anchor stage", "table": what, "examples": config.anchor_stage.examples,
            "epochs": config.anchor_stage.train.epochs, "stage_seconds": round(C.stage_log(inputs, config, "anchor")["seconds"], 1),
            "held_out": accuracy(C.evaluate(model, tokenizer, inputs, config, tasks=("numeric",))),
            "own_training_expressions": accuracy(C.evaluate(model, tokenizer, seen, config, tasks=("numeric",)))}


def copying_control(fraction: float, rotary: bool) -> dict:
    base = C.CALM_PRESETS["tiny"]
    config = dataclasses.replace(base, kv_keys=64, kv_value_max=64, train_fraction=fraction, anchor_stage=C.Stage(0), control_examples=0, train_examples=300,
                                 augment_stage=C.Stage(3000, dataclasses.replace(base.augment_stage.train, epochs=4)))
    inputs = C.study_inputs("tiny", config)
    world, table = C.kv_table(config)
    train_keys, eval_keys = set(inputs.keys["train"]), set(inputs.keys["eval"])
    rows = [{"expression": r["prompt"], "target": C.substitute(r["prompt"], table)}
            for r in world.kv_substitution(6000, seed=5).to_list()]

    def over(keys):
        return [r for r in rows if set(r["expression"].split()[::2]) <= keys]

    trained, asked = over(train_keys)[:400], over(eval_keys)[:150]
    probe = copy.deepcopy(inputs)
    probe.rows["substitution"]["eval"] = asked
    composed, tokenizer = C.load_composition(probe, config, "trained", 0, rotary)
    result = train(composed, sft_dataset(tokenizer, C._sft_rows("substitution", trained)),
                   dataclasses.replace(config.train, epochs=15), "/tmp/kilib-calm-dev", tokenizer=tokenizer, resume=False)
    return {"run": "copying control", "keys": 64, "training_keys": len(train_keys), "rotary": rotary,
            "training_rows": len(trained), "final_loss": result.losses[-1]["loss"],
            "held_out_keys_accuracy": accuracy(C.evaluate(composed, tokenizer, probe, config, tasks=("substitution",)))}


if __name__ == "__main__":
    set_threads()
    tiny = C.CALM_PRESETS["tiny"]
    world_table = dataclasses.replace(tiny, kv_keys=40, kv_value_max=60, kv_terms=(2, 3), train_fraction=0.2, control_examples=0,
                                      anchor_stage=C.Stage(5000, dataclasses.replace(tiny.anchor_stage.train, epochs=2,
                                                                                     lr=1e-3)))
    runs = [lambda: anchor_stage(world_table, "the world's: 40 keys, values 1..60, 2-3 terms"),
            lambda: anchor_stage(tiny, "the tiny preset's: values 1..16, two terms")]
    runs += [lambda f=f, r=r: copying_control(f, r) for f in (0.2, 0.5) for r in (False, True)]
    out = results_root() / "tiny" / "calm_dev.jsonl"
    lines = []
    for run in runs:
        lines.append(json.dumps(run()))
        print(lines[-1], flush=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
