"""Notebook 02's tasks (Zhong et al. §4; docs/methods.md, "## 02 Parametric knowledge transfer"):
prompts and formats, answers and scoring, and the rows each task draws from the Hub or the tiny world.

* Prompts: :func:`task_prompt` (open-instruct's evaluation prompts), :func:`demonstrations_for`,
  :data:`GSM_COT_EXEMPLARS`, the Tulu chat format (:func:`chat_turn`, :func:`use_chat_format`),
  :func:`train_pair`.
* Answers: :func:`task_answer` (the training target) and :func:`score` (GSM's last number,
  MMLU's letter, SNI's exact match and ROUGE-L, the closed-book questions' exact match).
* Rows: :data:`PAPER_DATASETS`, :func:`task_row`, :func:`hub_task_rows`, :func:`spread_draw`
  (the paper profile) and :func:`qa_rows` (the tiny world's closed-book questions).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from kilib.lm.data import load_local_dataset, qa_prompt
from kilib.lm.scoring import exact_match, last_number, parse_choice
from kilib.runtime import KilibError
from kilib.standin import switch

TASKS = ("gsm", "mmlu", "sni")  # the paper's (AlpacaFarm needs a judge)
# Beyond the paper, tiny world only: closed-book questions on pre-cutoff facts, trained on some facts and
# asked about others, where the teacher knows twice what the student does (notebook 00): the most direct
# test of whether the teacher's parameters carry its knowledge.
TINY_TASKS = ("qa",)
CHOICES = "ABCD"


# ---------------------------------------------------------------------------------------
# Prompts and chat formats
# ---------------------------------------------------------------------------------------
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
            "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
            "How many toys does he have now?",
            "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
            "5 + 4 = 9. So the answer is 9.",
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


def train_pair(task: str, row, chat_format: str = "") -> dict[str, str]:
    """The (user turn, answer) pair a seed or training row is shown as (a zero-shot prompt); in a
    chat format with a cue, the answer opens with it ("Answer: <rationale>")."""
    user, cue = chat_turn(task, task_prompt(task, row), chat_format)
    return {"prompt": user, "answer": f"{cue} {task_answer(task, row)}" if cue else task_answer(task, row)}


def train_pairs(task: str, rows, chat_format: str = "") -> list[dict[str, str]]:
    """:func:`train_pair` of each row."""
    return [train_pair(task, r, chat_format) for r in rows]


# ---------------------------------------------------------------------------------------
# Answers and scoring
# ---------------------------------------------------------------------------------------
def task_answer(task: str, row) -> str:
    """The training target: GSM's worked rationale ending in the answer, MMLU's letter, SNI's output,
    a closed-book question's answer."""
    return row["rationale"] if task == "gsm" else row["output"] if task == "sni" else row["answer"]


def score(task: str, prediction: str, row) -> dict[str, float]:
    """GSM: the last number equals the answer; MMLU: the letter is right
    (:func:`kilib.transfer.study.evaluate` picks it by the next token's probability, as
    open-instruct does); SNI: exact match after normalisation, and ROUGE-L F1 against the output (Zhong et al. §4)."""
    if task == "gsm":
        return {"correct": float(last_number(prediction) == last_number(row["answer"]))}
    if task == "mmlu":
        return {"correct": float(parse_choice(prediction, list(CHOICES)) == row["answer"])}
    if task == "qa":
        return {"correct": exact_match(prediction, row["answer"])}
    return {"correct": exact_match(prediction, row["output"]), "rouge_l": rouge_l(prediction, row["output"])}


@functools.cache
def _rouge_scorer():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (no stemming), as SNI is scored."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


# ---------------------------------------------------------------------------------------
# Rows: the Hub's datasets (paper) and the tiny world's closed-book questions
# ---------------------------------------------------------------------------------------
# The paper profile's data (docs/methods.md, "## 02 Parametric knowledge transfer"): Hub dataset,
# config, and the split each role draws from. A local folder of parquet or jsonl files with the
# same split names works in its place.
# ``stream``: from the Hub, read in streaming mode and drawn across the split's files
# (:func:`spread_draw`), for SNI's millions of rows in one file per task; a local copy is read
# whole and shuffled over every row. A shuffle buffer alone draws only from its first rows plus
# the sample, so on data ordered task by task (or MMLU's test set, sorted by subject) it would
# never reach the end: GSM8K and MMLU are loaded whole and shuffled over every row.
# ``demos_by_subject``: the whole demonstration split in its order, and each question's k
# demonstrations are the first k of its subject (MMLU's dev set has five per subject), as in
# open-instruct's MMLU evaluation. GSM8K's demonstrations are no split but
# :data:`GSM_COT_EXEMPLARS`, as in open-instruct's GSM8K evaluation.
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


def spread_draw(data, n: int, seed: int = 0, buffer_size: int = 1_000) -> list[dict]:
    """``n`` rows of a streamed split (a ``datasets.IterableDataset``) drawn across its files:
    the files in an order shuffled with ``seed``, an equal share of ``n`` from each (the first
    ``n % files`` give one more; a file with too few rows passes what it lacks to the next), each
    file's share drawn through a ``buffer_size``-row shuffle buffer, and the rows shuffled
    together. For SNI's one file per task, the draw spreads over the tasks evenly, where one
    buffer over the whole split would draw from the first few tasks only."""
    files = data.num_shards
    order = list(range(files))
    random.Random(f"spread-files|{seed}").shuffle(order)
    rows: list[dict] = []
    owed = 0
    for k, index in enumerate(order):
        want = n // files + (k < n % files) + owed
        if want == 0:
            continue
        shard = data.shard(num_shards=files, index=index).shuffle(seed=seed, buffer_size=buffer_size)
        got = list(shard.take(want))
        rows += got
        owed = want - len(got)
    random.Random(f"spread-rows|{seed}").shuffle(rows)
    return rows


def hub_task_rows(task: str, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """``sizes`` rows per role (seed, train, demos, eval) from the task's Hub dataset, shuffled
    with ``seed``: over the whole split, or, where the dataset says ``stream`` and is read from
    the Hub (SNI's training split alone has millions of rows), streamed and spread across the
    split's files (:func:`spread_draw`). A local copy is always read whole and shuffled over every
    row. Seed, training and, where they share a split, demonstration rows are disjoint."""
    # imported here: only the paper profile reads the Hub, and importing datasets takes seconds
    from datasets import load_dataset

    spec = PAPER_DATASETS[task]
    # a stand-in run reads the synthetic copy kilib.standin writes in the Hub dataset's format
    local = Path(switch.dataset_path(str(spec["path"]))).expanduser()
    streaming = bool(spec.get("stream", True)) and not local.is_dir()

    def open_split(split: str):
        if not local.is_dir():
            return load_dataset(spec["path"], spec["name"], split=split, streaming=streaming)
        files = sorted(p for p in local.iterdir() if p.name.split(".")[0].split("-")[0] == split)
        kinds = {p.suffix for p in files}
        if not files or len(kinds) != 1 or kinds - {".jsonl", ".json", ".parquet"}:
            raise KilibError(
                f"{local} has no single-format {split}.jsonl or {split}.parquet (or {split}-*.parquet) "
                f"for {task}: add it, or point kilib.transfer.tasks.PAPER_DATASETS at another folder"
            )
        return load_local_dataset(
            files,
            f"rewrite them as valid {split} rows for {task}, or point kilib.transfer.tasks.PAPER_DATASETS "
            "at another folder",
        )

    def stream(split: str, n: int | None):
        """``n`` rows drawn with the seed; ``None``: every row, in the split's order."""
        try:
            data = open_split(split)
        except KilibError:
            raise
        except (OSError, ValueError, ConnectionError) as e:
            raise KilibError(
                f"cannot load {spec['path']} ({split}) for {task}: {str(e).splitlines()[0][:200]}. "
                "Connect to the Hub once to cache it, or set kilib.transfer.tasks.PAPER_DATASETS to a local copy"
            ) from e
        if n is None:
            return [task_row(task, r) for r in data]
        if streaming:
            return [task_row(task, r) for r in spread_draw(data, n, seed)]
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


def qa_rows(world, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """Closed-book rows on pre-cutoff facts, each role on its own facts: the evaluation facts are
    never trained on (nor seen in the seed samples), and are asked with their first eval
    paraphrase, as notebook 00 asks them; the other roles use the first train paraphrase."""
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
