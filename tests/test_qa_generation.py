"""LLM-written Q&A sets and LLM judging (kilib.sft.qa_generation, kilib.sft.judge, kilib.lm.llm;
docs/methods.md, Mecklenburg et al. §2).

The scaling rules are checked with scripted generators: small deterministic test doubles of an LLM
that write numbered Q&A pairs and repeat themselves on purpose. The two real backends run for real:
the OpenAI-compatible one against a local HTTP server, the local one on a saved tiny model."""

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kilib.lm import llm
from kilib.lm.scoring import normalize_answer
from kilib.runtime import KilibError
from kilib.sft import judge as J
from kilib.sft import qa_format as F
from kilib.sft import qa_generation as Q
from kilib.sft import rules as R

SECTIONS = [
    {
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Overview",
        "text": "The 2023 Example Cup was held in Freedonia. Sylvania won the final 3-1.",
    },
    {
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Venues",
        "text": "Three stadiums in two cities hosted the matches of the cup.",
    },
    {
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Final",
        "text": "Anna Berg scored twice in the final at Example Stadium.",
    },
]
FACTS = [
    {
        "fact_id": "cup.fact000",
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Overview",
        "text": "Sylvania won the 2023 Example Cup final 3-1.",
    },
    {
        "fact_id": "cup.fact001",
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Final",
        "text": "Anna Berg scored twice in the 2023 Example Cup final.",
    },
    {
        "fact_id": "cup.fact002",
        "doc_id": "cup",
        "title": "2023 Example Cup",
        "section": "Venues",
        "text": "Three stadiums hosted the 2023 Example Cup.",
    },
]


def field(prompt, name):
    return re.search(rf"^{name}: (.*)$", prompt, re.M).group(1)


def line(question, answer):
    return json.dumps({"question": question, "answer": answer})


class ScriptedGenerator:
    """A test double for an LLM: numbered, deterministic replies, in the reply format each prompt asks for.

    Token prompts: each reply restates the previous reply's last question in other case and
    punctuation (a duplicate once normalised), then writes the requested number of new numbered
    questions, then a malformed line. Fact prompts: ``fact_behaviour`` picks per fact text."""

    name = "scripted/test-llm"
    revision = "r1"

    def __init__(self, fact_behaviour=None):
        self.prompts = []
        self.counter = {}
        self.last = {}
        self.fact_behaviour = fact_behaviour or {}

    def complete(self, prompts):
        self.prompts += list(prompts)
        return [self.reply(p) for p in prompts]

    def reply(self, prompt):
        n = int(re.search(r"Write (\d+)", prompt).group(1)) if "Write " in prompt else 0
        if "List the atomic facts" in prompt:
            section = field(prompt, "Section")
            return f"Here are the facts:\n- {section} fact one.\n- {section} fact one.\nSKIP: {section} was great."
        key = field(prompt, "Fact") if "Fact: " in prompt else field(prompt, "Section")
        behaviour = self.fact_behaviour.get(key, "fresh")
        if behaviour == "stuck":  # always the same question: never reaches 10 unique ones
            return "\n".join(line(f"What is known about {key}?", "it") for _ in range(n))
        out = []
        if key in self.last:
            out.append(line(self.last[key].upper() + "!!", "again"))  # a duplicate once normalised
        if behaviour == "half" and key not in self.last:  # first reply: 3 of the 10 repeat earlier ones
            fresh = n - 3
        else:
            fresh = n
        for _ in range(fresh):
            k = self.counter[key] = self.counter.get(key, 0) + 1
            out.append(line(f"What is detail number {k} about {key}?", f"value {k}"))
        out += [out[-1]] * (n - fresh)
        out.append("this line is not JSON")
        self.last[key] = json.loads(out[-2])["question"]
        return "```json\n" + "\n".join(out) + "\n```"


def section_pairs(pairs, name):
    return [p for p in pairs if p["section"] == name and p["origin"] == "generated"]


def normalised(pairs):
    return [normalize_answer(p["question"]) for p in pairs]


# ---------------------------------------------------------------------------------------
# Token-based scaling
# ---------------------------------------------------------------------------------------
def test_token_based_budget_holds_per_section_and_duplicates_are_dropped(tokenizer):
    generator = ScriptedGenerator()
    seeds = [{"question": "Where was the 2023 Example Cup held?", "answer": "Freedonia"}]
    sets = Q.generate_token_based(
        generator, SECTIONS, tokenizer, (1, 5, 10), overview_pairs=seeds, pairs_per_request=4, cache=False
    )
    assert isinstance(sets, R.QASets) and sets.rule == "token" and sets.doc_id == "cup" and list(sets) == [1, 5, 10]
    counts = {s["section"]: len(tokenizer.encode(s["text"], add_special_tokens=False)) for s in SECTIONS}
    assert sets.section_tokens == counts
    # The rule of the paper, per section and scale: generated tokens first exceed scale x T.
    report = R.budget_report(sets, sets.section_tokens)
    assert len(report) == 9 and all(row["exceeds"] and row["tight"] for row in report)
    for pair in sets[10]:
        q, a = pair["question"], pair["answer"]
        assert pair["tokens"] == sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in (q, a))
    # Seeds open every scale; 1x and 5x are per-section prefixes of 10x.
    for scale in (1, 5, 10):
        assert sets[scale][0]["origin"] == "overview_seed" and sets[scale][0]["question"] == seeds[0]["question"]
    for name in counts:
        one, five, ten = (section_pairs(sets[s], name) for s in (1, 5, 10))
        assert one == five[: len(one)] and five == ten[: len(five)] and len(one) < len(five) < len(ten)
        assert sets.report["pairs"][name] == len(ten)  # generation stopped at the pair that crossed 10x T
    # Unique questions (normalised), empty fact ids, provenance on every pair.
    assert len(set(normalised(sets[10]))) == len(sets[10])
    generated = [p for p in sets[10] if p["origin"] == "generated"]
    assert all(
        p["fact_ids"] == []
        and p["generator"] == "scripted/test-llm"
        and p["revision"] == "r1"
        and p["prompt_id"].startswith("token_qa-")
        for p in generated
    )
    # Every request after the first for a section restated a question (dropped) and had one bad line.
    requests = sets.report["requests"]
    assert requests == sum(sets.report["rounds"].values()) == len(generator.prompts) > len(SECTIONS)
    assert sets.report["malformed_lines"] == requests
    assert sets.report["duplicate_questions"] == requests - len(SECTIONS)
    # Later requests list the section's questions so far, for the generator to avoid.
    later = [p for p in generator.prompts if "Section: Venues" in p][1]
    assert "What is detail number 1 about Venues?" in later and "do not repeat" in later


def test_token_based_records_a_shortfall_and_refuses_an_empty_set(tokenizer):
    sets = Q.generate_token_based(
        ScriptedGenerator(), SECTIONS, tokenizer, (1, 10), pairs_per_request=2, max_rounds=2, cache=False
    )
    assert set(sets.shortfalls[10]) == {"Overview", "Venues", "Final"}
    assert all(v["tokens"] <= v["budget"] and v["pairs"] == 4 for v in sets.shortfalls[10].values())

    class Silent(ScriptedGenerator):
        def reply(self, prompt):
            return "I cannot help with that."

    with pytest.raises(KilibError, match="wrote no usable Q&A pair for 'cup'"):
        Q.generate_token_based(Silent(), SECTIONS, tokenizer, max_rounds=3, cache=False)
    with pytest.raises(KilibError, match="pass doc_id= to pick one"):
        Q.generate_token_based(Silent(), SECTIONS + [dict(SECTIONS[0], doc_id="other")], tokenizer, cache=False)


def test_generated_sets_are_cached_with_provenance_and_prompts(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path))
    first = ScriptedGenerator()
    sets = Q.generate_token_based(first, SECTIONS, tokenizer, pairs_per_request=5)
    second = ScriptedGenerator()
    again = Q.generate_token_based(second, SECTIONS, tokenizer, pairs_per_request=5)
    assert second.prompts == [] and dict(again) == dict(sets)
    assert again.shortfalls == sets.shortfalls and again.section_tokens == sets.section_tokens
    assert again.report == sets.report and list(again) == [1, 5, 10]
    folder = next((tmp_path / "qa-sets").iterdir())
    lines = [json.loads(x) for x in (folder / "pairs-10.jsonl").read_text().splitlines()]
    assert lines == sets[10] and {"generator", "revision", "prompt_id", "question", "answer"} <= set(lines[0])
    prompts = json.loads((folder / "prompts.json").read_text())
    assert prompts == {lines[0]["prompt_id"]: F.TOKEN_QA_PROMPT}
    # Another prompt is another set.
    third = ScriptedGenerator()
    Q.generate_token_based(third, SECTIONS, tokenizer, pairs_per_request=5, prompt=F.TOKEN_QA_PROMPT + "\n")
    assert third.prompts

    facts = Q.list_atomic_facts(first, SECTIONS)
    fourth = ScriptedGenerator()
    assert Q.list_atomic_facts(fourth, SECTIONS) == facts and fourth.prompts == []


# ---------------------------------------------------------------------------------------
# Atomic facts and fact-based scaling
# ---------------------------------------------------------------------------------------
def test_atomic_facts_are_listed_deduplicated_and_vague_ones_skipped():
    facts = Q.list_atomic_facts(ScriptedGenerator(), SECTIONS, cache=False)
    assert [f["text"] for f in facts] == ["Overview fact one.", "Venues fact one.", "Final fact one."]
    assert [f["fact_id"] for f in facts] == ["cup.fact000", "cup.fact001", "cup.fact002"]
    assert [s["text"] for s in facts.skipped] == ["Overview was great.", "Venues was great.", "Final was great."]
    assert facts.report == {"requests": 3, "malformed_lines": 3, "duplicate_facts": 3}
    assert F.parse_fact_lines("1. First fact.\n2) Second fact.\n* skip: vague\n\n") == (
        ["First fact.", "Second fact."],
        ["vague"],
        0,
    )


def test_fact_based_gives_ten_unique_pairs_per_fact_and_skips_a_stuck_fact(tokenizer):
    behaviour = {FACTS[1]["text"]: "half", FACTS[2]["text"]: "stuck"}
    generator = ScriptedGenerator(behaviour)
    sets = Q.generate_fact_based(
        generator, FACTS, per_fact=10, scales=(1, 5, 10), tokenizer=tokenizer, max_rounds=3, cache=False
    )
    assert sets.rule == "fact" and list(sets) == [1, 5, 10]
    per_fact = {s: {f["fact_id"]: [p for p in sets[s] if p["fact_ids"] == [f["fact_id"]]] for f in FACTS} for s in sets}
    assert {fid: len(p) for fid, p in per_fact[10].items()} == {"cup.fact000": 10, "cup.fact001": 10, "cup.fact002": 0}
    assert sets.report["skipped_facts"] == ["cup.fact002"] and sets.report["kept_facts"] == [
        "cup.fact000",
        "cup.fact001",
    ]
    for fid in ("cup.fact000", "cup.fact001"):
        assert per_fact[1][fid] == per_fact[10][fid][:1] and per_fact[5][fid] == per_fact[10][fid][:5]
    assert len(set(normalised(sets[10]))) == 20
    assert all(p["section"] == "Final" for p in per_fact[10]["cup.fact001"]) and all(p["tokens"] > 0 for p in sets[10])
    # The half-duplicated fact was asked again for exactly the 3 pairs it missed; the stuck one 3 times.
    asked = [p for p in generator.prompts if FACTS[1]["text"] in p]
    assert [re.search(r"Write (\d+)", p).group(1) for p in asked] == ["10", "3"]
    assert sum(FACTS[2]["text"] in p for p in generator.prompts) == 3
    assert sets.report["regenerations"] == 1 + 2

    with pytest.raises(KilibError, match="no fact of 'cup' got 10 unique"):
        Q.generate_fact_based(ScriptedGenerator({FACTS[2]["text"]: "stuck"}), FACTS[2:], max_rounds=2, cache=False)
    with pytest.raises(KilibError, match="per_fact must be at least the largest scale"):
        Q.generate_fact_based(generator, FACTS, per_fact=5, cache=False)


def test_eval_questions_are_disjoint_from_every_training_question(tokenizer):
    behaviour = {FACTS[2]["text"]: "stuck"}
    token_sets = Q.generate_token_based(ScriptedGenerator(), SECTIONS, tokenizer, pairs_per_request=4, cache=False)
    fact_sets = Q.generate_fact_based(
        ScriptedGenerator(behaviour), FACTS, tokenizer=tokenizer, max_rounds=2, cache=False
    )
    # A fresh generator starts its numbering again: its first questions are the training ones.
    evaluator = ScriptedGenerator()
    evals = Q.generate_eval_sets(
        evaluator, SECTIONS, tokenizer, FACTS, [token_sets, fact_sets], pairs_per_request=4, cache=False
    )
    assert evals.rule == "eval" and list(evals) == ["token", "fact"]
    training = set(normalised(token_sets[10])) | set(normalised(fact_sets[10]))
    for kind in ("token", "fact"):
        assert evals[kind] and not set(normalised(evals[kind])) & training
    assert evals.report["duplicate_questions"] > len(evals["token"])  # the generator did repeat training questions
    assert all(row["exceeds"] for row in R.budget_report({1: evals["token"]}, evals.section_tokens))
    # One question per fact the fact-based training kept (the stuck fact was skipped there).
    assert [p["fact_ids"] for p in evals["fact"]] == [["cup.fact000"], ["cup.fact001"]]
    assert evals.short_facts == {"fact": []}


# ---------------------------------------------------------------------------------------
# Facts of token-based pairs (Fig 2)
# ---------------------------------------------------------------------------------------
def test_pairs_map_to_the_lexically_closest_fact():
    pairs = [
        {"question": "Who won the 2023 Example Cup final?", "answer": "Sylvania", "doc_id": "cup", "fact_ids": []},
        {
            "question": "How many goals did Anna Berg score in the final?",
            "answer": "two",
            "doc_id": "cup",
            "fact_ids": [],
        },
        {"question": "What colour is the mascot?", "answer": "blue", "doc_id": "cup", "fact_ids": []},
    ]
    mapped = Q.map_pairs_to_facts(pairs, FACTS)
    assert [p["fact_ids"] for p in mapped] == [["cup.fact000"], ["cup.fact001"], []]
    assert pairs[0]["fact_ids"] == []  # copies, the input is untouched
    assert R.fact_coverage(mapped, [f["fact_id"] for f in FACTS]) == {
        "cup.fact000": 1,
        "cup.fact001": 1,
        "cup.fact002": 0,
    }


# ---------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Correct: yes", True),
        ("correct: NO", False),
        ("**Correct:** yes", True),
        ("Correct - no.", False),
        ("Yes", True),
        ("no.", False),
        ("Correct: yes\nCorrect: no", None),
        ("Incorrect: yes", None),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_judge_replies_are_parsed_strictly(reply, verdict):
    assert J.parse_verdict(reply) is verdict


def test_judge_answers_asks_one_prompt_per_item_and_counts_unparseable():
    class Judge:
        name, revision = "mistralai/Mistral-7B-Instruct-v0.3", None

        def __init__(self):
            self.prompts = []

        def complete(self, prompts):
            self.prompts += prompts
            replies = {"Sylvania": "Correct: yes", "Ruritania": "Correct: no"}
            return [replies.get(p.rsplit("Candidate answer: ", 1)[1].split("\n")[0], "hmm") for p in prompts]

    judge = Judge()
    items = [
        {"question": "Who won?", "expected": "Sylvania", "candidate": "Sylvania"},
        {"question": "Who won?", "expected": "Sylvania", "candidate": "Ruritania"},
        {"question": "Who won?", "expected": "Sylvania", "candidate": "no idea"},
    ]
    verdicts = J.judge_answers(judge, items, qa_generator="meta-llama/Llama-2-70b-chat-hf")
    assert verdicts == [True, False, None] and verdicts.unparseable == 1 and verdicts.replies[2] == "hmm"
    assert "Question: Who won?\nExpected answer: Sylvania\nCandidate answer: Ruritania" in judge.prompts[1]
    with pytest.raises(KilibError, match="both mistral models"):
        J.judge_answers(judge, items, qa_generator="mistralai/Mixtral-8x7B-Instruct-v0.1")
    with pytest.raises(KilibError, match="lacks candidate"):
        J.judge_answers(judge, [{"question": "q", "expected": "a"}])


def test_agreement_and_kappa_match_a_hand_computation():
    judge = [True, True, False, False, True, None]
    lexical = [1.0, 0.0, 0.0, False, True, 1.0]
    # Without the unparseable item: 5 pairs, 4 agree. p_o = 0.8; judge says yes 3/5, lexical 2/5;
    # p_e = 0.6 * 0.4 + 0.4 * 0.6 = 0.48; kappa = (0.8 - 0.48) / (1 - 0.48) = 0.32 / 0.52.
    result = J.judge_agreement(judge, lexical)
    assert result["n"] == 5 and result["agreement"] == pytest.approx(0.8)
    assert result["cohen_kappa"] == pytest.approx(0.32 / 0.52)
    assert J.judge_agreement([True, False], [False, True])["cohen_kappa"] == pytest.approx(-1.0)
    assert math.isnan(J.judge_agreement([True, True], [1, 1])["cohen_kappa"])
    with pytest.raises(KilibError, match="3 judge verdicts against 2"):
        J.judge_agreement([True, True, False], [1, 0])


def test_model_families_and_the_same_family_check():
    assert llm.family_of("meta-llama/Llama-2-7b-chat-hf") == "llama"
    assert llm.family_of("mistralai/Mixtral-8x7B-Instruct-v0.1") == "mistral"
    assert llm.family_of("Qwen/Qwen2.5-7B-Instruct") == "qwen"
    assert llm.family_of("google/gemma-2-9b-it") == "gemma"
    assert llm.family_of("microsoft/Phi-3-mini-4k-instruct") == "phi"
    assert llm.family_of("gpt-4-0613") == "gpt" and llm.family_of("o3-mini") == "gpt"
    assert llm.family_of("EleutherAI/pythia-1b-deduped") == "gpt_neox"
    assert llm.family_of("deepseek-ai/DeepSeek-R1-Distill-Llama-8B") == "llama"
    assert llm.family_of("/models/my-own-model") is None
    assert J.check_judge_family("gpt-4-0613", "meta-llama/Llama-2-7b-chat-hf") == ("gpt", "llama")
    with pytest.raises(KilibError, match="both llama models"):
        J.check_judge_family("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-2-7b-chat-hf")
    assert J.check_judge_family(
        "meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-2-7b-chat-hf", allow_same_family=True
    ) == ("llama", "llama")
    with pytest.warns(UserWarning, match="cannot tell the model family"):
        J.check_judge_family("/models/my-own-model", "gpt-4")


# ---------------------------------------------------------------------------------------
# The two real backends
# ---------------------------------------------------------------------------------------
class ChatServer:
    """A local OpenAI-compatible endpoint: answers POST /v1/chat/completions with a canned
    completion echoing the prompt, or with ``status`` where one is set; records every request."""

    def __init__(self, status=200):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if status != 200:
                    payload = {"error": {"message": "denied", "type": "invalid_request_error", "code": None}}
                else:
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {
                                    "role": "assistant",
                                    "content": f"  echo: {body['messages'][-1]['content']}\n",
                                },
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_compatible_generator_through_a_local_server(monkeypatch):
    monkeypatch.setenv("KILIB_TEST_API_KEY", "sk-local")
    with ChatServer() as server:
        generator = llm.OpenAICompatibleGenerator(
            "qwen2.5:7b",
            base_url=server.url,
            api_key_env="KILIB_TEST_API_KEY",
            temperature=0.5,
            max_tokens=64,
            seed=3,
            workers=2,
        )
        assert generator.complete(["first prompt", "second prompt", "first prompt"]) == [
            "echo: first prompt",
            "echo: second prompt",
            "echo: first prompt",
        ]
    assert len(server.requests) == 3
    by_prompt = {}
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-local"
        body = request["body"]
        assert body["model"] == "qwen2.5:7b" and body["temperature"] == 0.5 and body["max_tokens"] == 64
        assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1
        by_prompt.setdefault(body["messages"][0]["content"], []).append(body["seed"])
    assert len(set(by_prompt["first prompt"])) == 2  # a repeated request is a new sample

    with ChatServer(status=401) as server:
        denied = llm.OpenAICompatibleGenerator(
            "m", base_url=server.url, api_key_env="KILIB_TEST_API_KEY", max_retries=0
        )
        with pytest.raises(KilibError, match="rejected the API key in KILIB_TEST_API_KEY"):
            denied.complete(["x"])
    gone = llm.OpenAICompatibleGenerator(
        "m", base_url=server.url, api_key_env="KILIB_TEST_API_KEY", max_retries=0, timeout=5
    )
    with pytest.raises(KilibError, match="cannot reach http://127.0.0.1"):
        gone.complete(["x"])
    monkeypatch.delenv("KILIB_TEST_API_KEY")
    with pytest.raises(KilibError, match="KILIB_TEST_API_KEY is not set"):
        llm.OpenAICompatibleGenerator("m", base_url=server.url, api_key_env="KILIB_TEST_API_KEY").complete(["x"])


@pytest.mark.parametrize("saved_model", ["llama"], indirect=True)  # the plumbing is the same for every family
def test_local_generator_on_a_saved_model(saved_model):
    import torch

    from kilib.lm.inference import generate
    from kilib.lm.models import load_causal_lm
    from kilib.lm.training import render_prompt

    _, folder, _ = saved_model
    prompts = ["Who won the cup?", "Where was the final?", "Who won the cup?"]
    a = llm.LocalGenerator(folder, quantization="none", max_new_tokens=6, seed=1, batch_size=2)
    state = torch.random.get_rng_state()
    replies = a.complete(prompts)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is untouched
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    assert (
        llm.LocalGenerator(folder, quantization="none", max_new_tokens=6, seed=1, batch_size=2).complete(prompts)
        == replies
    )
    assert (
        llm.LocalGenerator(folder, quantization="none", max_new_tokens=6, seed=2, batch_size=2).complete(prompts)
        != replies
    )
    assert a.complete(prompts) != replies  # the same request again is a new sample
    assert a.name == str(folder) and a.settings["seed"] == 1

    greedy = llm.LocalGenerator(folder, quantization="none", max_new_tokens=6, temperature=0)
    model, tokenizer = load_causal_lm(folder, quantization="none")
    expected = generate(model, tokenizer, [render_prompt(tokenizer, p) for p in prompts], max_new_tokens=6)
    assert greedy.complete(prompts) == [e.strip() for e in expected]


def test_generator_protocol_and_input_errors(tokenizer):
    assert isinstance(ScriptedGenerator(), llm.Generator)
    assert isinstance(llm.OpenAICompatibleGenerator("gpt-4"), llm.Generator)
    with pytest.raises(KilibError, match="is not a generator"):
        Q.generate_token_based(object(), SECTIONS, tokenizer, cache=False)

    class Short(ScriptedGenerator):
        def complete(self, prompts):
            return ["Correct: yes"]

    with pytest.raises(KilibError, match="returned 1 replies to 2 prompts"):
        J.judge_answers(Short(), [{"question": "q", "expected": "a", "candidate": "a"}] * 2)
    assert F.parse_qa_reply('[{"question": "Q1?", "answer": 3}, {"question": "", "answer": "x"}]') == (
        [("Q1?", "3")],
        1,
    )
    assert F.parse_qa_reply('1. {"question": "Q2?", "answer": "b"},\nnoise') == ([("Q2?", "b")], 1)
