"""Choose the zoo's reading stage on a development world, not on the post-cutoff test.

Pretrains one zoo member with the tiny preset's corpus (cached as the zoo caches it), then
runs each reading stage given on top of it and reports what the model knows (notebook 00's
measures) plus ``dev_reading``: questions with the passage in context about editions of fresh
worlds 1000 and up, asked with eval paraphrases (``zoo.reading_examples(split="eval")``), and
``dev_reading_known_series``: the same worlds renamed onto this world's series
(``known_series=1.0``), as world 0's post-cutoff questions are. A stage's "known" (default 0)
sets ``ReadingStage.known_series``; "seed" (default 0) the stage's seed, which draws its
examples and its batches: the stage's outcome moves by several points between seeds.
One JSON line per measured model is appended to OUT_JSONL.

    KILIB_CACHE_DIR=/tmp/c python tools/zoo_reading_dev.py llama-m 16 \
        '[{"rc": 14000, "qa": 10000, "lr": 1e-3}]' results/tiny/zoo_reading_dev.jsonl

RC (default 0) sets ``rc_per_fact`` of pretraining; BASE_EVAL=1 also measures the pretrained
model before any stage. The first nine committed rows were written by the first form of this
script, which measured the same things and printed them; its log lines were converted to JSON
rows. The later rows come from this form; a row's "note" says where its run differed.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

from kilib.lm.models import load_causal_lm
from kilib.lm.training import TrainConfig
from kilib.tiny import zoo


def main() -> None:
    name, epochs, stages, out = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    base = zoo.zoo_config("tiny")
    config = dataclasses.replace(
        base,
        rc_per_fact=int(os.environ.get("RC", 0)),
        reading=zoo.ReadingStage(),
        train=dataclasses.replace(base.train, epochs=epochs),
    )  # the stages come below
    world = zoo.world_of(config)
    start = time.time()
    pretrained = zoo.pretrained_dir(config, name)
    dev = zoo.reading_examples(world, 150, seed=99, split="eval", first_world=1000)
    dev_known = zoo.reading_examples(world, 150, seed=99, split="eval", first_world=1000, known_series=1.0)

    def report(cfg) -> dict:
        model, tok = load_causal_lm(zoo.model_dir(cfg, name))
        r = {
            **zoo.knowledge_report(cfg, name),
            "dev_reading": zoo.answer_accuracy(model, tok, dev),
            "dev_reading_known_series": zoo.answer_accuracy(model, tok, dev_known),
        }
        return {k: round(v["accuracy"], 3) for k, v in r.items() if isinstance(v, dict)}

    weights = hashlib.sha256((pretrained / "model.safetensors").read_bytes()).hexdigest()[:16]

    def emit(row: dict) -> None:
        row = {
            "model": name,
            "pretraining_epochs": epochs,
            "rc_per_fact": config.rc_per_fact,
            "pretrained_weights_sha256": weights,
            **row,
        }
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if os.environ.get("BASE_EVAL"):
        emit({"stage": None, "pretraining_s": round(time.time() - start), **report(config)})
    for st in stages:
        stage = zoo.ReadingStage(
            reading_examples=st["rc"],
            closed_book_examples=st["qa"],
            train=TrainConfig(
                epochs=st.get("ep", 1),
                batch_size=16,
                lr=st["lr"],
                scheduler="cosine",
                warmup_ratio=0.05,
                weight_decay=0.01,
                max_grad_norm=1.0,
                logging_steps=20,
                save_every_epoch=False,
                progress=False,
                seed=st.get("seed", 0),
            ),
            known_series=st.get("known", 0.0),
            models=(name,),
        )
        cfg = dataclasses.replace(config, reading=stage)
        start = time.time()
        zoo.model_dir(cfg, name)
        emit({"stage": st, "stage_s": round(time.time() - start), **report(cfg)})


if __name__ == "__main__":
    main()
