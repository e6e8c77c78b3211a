"""Compare zoo model shapes on a development measure, not on the held-out test questions.

Pretrains one zoo member (the tiny preset's corpus and schedule; SPEC_JSON overrides fields of
its ModelSpec, and a "train" key in it fields of the TrainConfig) and measures closed-book
accuracy on one *unused* train paraphrase per pre-cutoff fact: a paraphrase of the train split
that the pretraining corpus does not hold (the corpus samples 6 of 16). Notebook 00 reports eval
paraphrases, which this never asks.
``seen_train`` is the same on a paraphrase the corpus does hold (memorisation). One JSON line
per run is appended to OUT_JSONL.

    KILIB_CACHE_DIR=.cache python tools/zoo_size_dev.py neox-m '{"hidden": 192, "heads": 6, "ffn": 768}' \
        results/tiny/zoo_size_dev.jsonl
"""

import dataclasses
import json
import sys

from kilib.lm.data import qa_prompt
from kilib.lm.models import load_causal_lm
from kilib.results import read_json
from kilib.tiny import zoo


def main() -> None:
    name, spec_over, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    train_over = spec_over.pop("train", {})
    base = zoo.zoo_config("tiny")
    models = tuple(dataclasses.replace(m, **spec_over) if m.name == name else m for m in base.models)
    config = dataclasses.replace(base, models=models, train=dataclasses.replace(base.train, **train_over))
    folder = zoo.pretrained_dir(config, name)
    world = zoo.world_of(config)
    model, tokenizer = load_causal_lm(folder)
    corpus = set(zoo.pretraining_texts(world, tokenizer, config, seed=config.train.seed))
    unused, seen = [], []
    for fid in sorted(world.facts):
        fact = world.facts[fid]
        if fact.period != "pre":
            continue
        items = [
            {"prompt": qa_prompt(q), "answer": fact.object, "relation": fact.relation}
            for q in world.questions(fid, "train")
        ]
        in_corpus = [zoo.chat_example(tokenizer, it["prompt"], fact.object) in corpus for it in items]
        unused += [it for it, c in zip(items, in_corpus) if not c][:1]
        seen += [it for it, c in zip(items, in_corpus) if c][:1]
    log = read_json(folder / "pretraining.json")
    row = {
        "model": name,
        "spec": dataclasses.asdict(next(m for m in models if m.name == name)),
        **({"train": train_over} if train_over else {}),
        "parameters": log["parameters"],
        "pretraining_s": round(log["seconds"]),
        "questions": len(unused),
        "dev_unused_train": round(zoo.answer_accuracy(model, tokenizer, unused)["accuracy"], 3),
        "seen_train": round(zoo.answer_accuracy(model, tokenizer, seen)["accuracy"], 3),
    }
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
