"""Pretrain one zoo member under a changed recipe and report what it knows.

How the tiny zoo's epoch count was chosen (README, "The tiny profile"):
    KILIB_CACHE_DIR=/tmp/sweep python tools/zoo_sweep.py llama-m 16 3e-3 6 2
arguments: model, epochs, learning rate, Q&A paraphrases per fact, reading-comprehension examples per fact.
Prints one JSON line; ``cpu_est_s`` scales the corpus by a measured 2-core CPU throughput.
"""

import dataclasses
import json
import sys
import time

from kilib.results import read_json
from kilib.tiny import zoo

CPU_TOKENS_PER_SECOND = {"llama-m": 8600, "llama-s": 16000}  # measured on 2 cores, float32

base = zoo.zoo_config("tiny")
name, epochs, lr, qa, rc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
config = dataclasses.replace(
    base,
    qa_per_fact=qa,
    rc_per_fact=rc,
    train=dataclasses.replace(
        base.train, epochs=epochs, lr=lr, progress=False, logging_steps=1000, save_every_epoch=False
    ),
)
start = time.time()
folder = zoo.model_dir(config, name)
seconds = time.time() - start
log = read_json(folder / "pretraining.json")
report = zoo.knowledge_report(config, name)
print(
    json.dumps(
        {
            "model": name,
            "epochs": epochs,
            "lr": lr,
            "qa": qa,
            "rc": rc,
            "seconds": round(seconds, 1),
            "tokens": log["corpus_tokens"],
            "cpu_est_s": round(epochs * log["corpus_tokens"] / CPU_TOKENS_PER_SECOND.get(name, 16000)),
            **{k: round(v["accuracy"], 3) for k, v in report.items() if isinstance(v, dict)},
        }
    )
)
