"""How notebook 01's tiny learning rate was chosen (Mecklenburg et al. give none).

    python tools/sft_lr_dev.py

On the first two new documents, one adapter per rule at 10x for each candidate rate, scored on
*train-split* paraphrases that no 10x set uses (a development set): the evaluation paraphrases
are never looked at. Writes results/tiny/sft_lr_dev.json.
"""

import dataclasses
import datetime

from transformers import AutoTokenizer

from kilib.results import write_json
from kilib.runtime import results_root
from kilib.sft.adapters import adapter_job, question_items, run_adapter_jobs
from kilib.sft.presets import INJECTION_PRESETS
from kilib.sft.rules import fact_based_sets, token_based_sets
from kilib.sft.study import accuracy_table, adapter_rows
from kilib.tiny import zoo

RATES = (3e-4, 1e-3, 3e-3)

if __name__ == "__main__":
    config = zoo.zoo_config("tiny")
    world = zoo.world_of(config)
    base = str(zoo.model_dir(config, "llama-m"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    jobs = []
    for doc in world.post_cutoff_doc_ids[:2]:
        sets = {
            "fact": fact_based_sets(world, doc, tokenizer=tokenizer),
            "token": token_based_sets(world, doc, tokenizer),
        }
        used = {p["question"] for s in sets.values() for pairs in s.values() for p in pairs}
        dev = [
            {"question": q, "answer": f.object}
            for f in world.facts_of(doc)
            for q in world.questions(f.id, "train")[10:]
            if q not in used
        ][:60]
        for lr in RATES:
            preset = INJECTION_PRESETS["tiny"]
            cfg = dataclasses.replace(preset, train=dataclasses.replace(preset.train, lr=lr))
            for rule, s in sets.items():
                jobs.append(
                    adapter_job(
                        base, cfg, s[10], {"dev": question_items(dev)}, 0, doc_id=doc, rule=rule, scale=10, lr=lr
                    )
                )
    results = run_adapter_jobs(jobs)
    rows = adapter_rows(results, jobs)
    for row, job in zip(rows, [j for j in jobs for _ in j["eval_items"]["dev"]]):
        row["lr"] = job["tags"]["lr"]
    table = accuracy_table(rows, ["lr", "method", "doc_id"])
    print(table.to_string())
    write_json(
        results_root() / "tiny" / "sft_lr_dev.json",
        {
            "what": "notebook 01 tiny learning-rate choice: 10x adapters scored on unused train paraphrases (dev set)",
            "date": datetime.date.today().isoformat(),
            "rows": table.to_dict("records"),
            "mean_by_lr": accuracy_table(rows, ["lr"]).to_dict("records"),
        },
    )
