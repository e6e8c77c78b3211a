"""Offline tokenizers for the stand-ins (docs/standins.md).

``build_tokenizer(hub_id, folder)`` writes a tokenizer folder of the model's real transformers class
(``LlamaTokenizer``, ``Qwen2Tokenizer`` or ``GPTNeoXTokenizer``) with the real tokenizer's length, special
tokens at their real ids, BOS/EOS rule and chat template, all read from the model's spec
(``kilib/standin/configs/<org>--<name>.json``, section ``standin.tokenizer``).

Its ordinary tokens are not the real ones: a BPE trained here, deterministically, on English-like text
generated from a word list (:func:`english_text`), so that English splits into a realistic number of tokens
(about 1.2 to 1.5 per word) while the ids mean nothing the real model would recognise. Every text encodes:
the SentencePiece-style tokenizers fall back to the 256 byte tokens ``<0x00>``..``<0xFF>`` for a character
they do not hold, the byte-level ones start from all 256 bytes. The entries that training does not reach are
filled with tokens no text produces (``<standin_unused_N>``), so the length is exact. The same spec gives the
same files, byte for byte.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from pathlib import Path
from typing import Any

from kilib.runtime import KilibError

# Common English words, roughly by frequency (the Zipf weights below follow this order), with some inflected
# forms and a few accented loanwords, so that those characters are ordinary tokens too.
WORDS = tuple(
    """the of and to a in is that for it was on with as he be at by this had not are but from or have an they which
one you were her all she there would their we him been has when who will more no if out so said what up its
about into than them can only other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still own see men work long
get here between both life being under never day same another know while last might us great old year off
come since against go came right used take three states himself few house use during without again place
american around however home small found thought went say part once general high upon school every does got
united left number course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called didn't eyes find going
look asked later knew point next program city business give group toward young days let room president side
social given present several order national possible rather second face per among form important often things
looking early white case john become large big need four within felt along children saw best church ever least
power development light thing seemed family interest want members mind country area others done turned although
open god service certain kind problem began different door thus help sense means whole matter perhaps itself
york times law human line above name example action company hands local show whether five history gave today
either act feet across taken past quite anything seen having death experience body word half really field
week car words already information tell together college shall money period held keep sure free real probably
seems behind cannot political air question office brought whose special heard major problems ago became federal
moment study available known result street economic boy position reason change south board individual job
society areas west close turn love community true court force full seem am wife future age voice center woman
control common necessary policy following front sometimes six girl clear further land run students provide feel
party able mother music education university child effect level stood military town short morning total figure
private son art rest outside game story news plan team season final match player players club league cup won
lost win score goal goals scored coach stadium tournament champion champions title round played play playing
teams winner runner points record minute minutes half break host hosted held edition edition's nation nations
capital river north east island mountain lake valley village region province population language language's
built founded known named born died married wrote published book books song album film films released award
awards prize science theory research data model models method methods results paper papers university's
question questions answer answers fact facts knowledge new news report reports article articles page pages
january february march april may june july august september october november december monday tuesday
wednesday thursday friday saturday sunday spring summer autumn winter today tomorrow yesterday week weeks month
months year's decade century early late small smaller smallest large larger largest long longer longest high
higher highest low lower lowest old older oldest young younger youngest red blue green black white yellow
brown happy simple easy hard difficult quick slow strong weak rich poor famous popular modern ancient local
foreign western eastern northern southern central main short tall deep wide open closed ready able likely
said says saying asked asks asking made makes making took takes taking went goes going came comes coming saw
sees seeing gave gives giving found finds finding thought thinks thinking told tells telling became becomes
called calls calling worked works working played plays moved moves moving lived lives living started starts
starting ended ends ending opened opens opening showed shows showing wanted wants needed needs looked looks
used uses using tried tries trying helped helps helping turned turns kept keeps brought brings wrote writes
writing read reads reading ran runs running won wins winning lost loses losing held holds holding built builds
paid pays paying met meets meeting led leads leading grew grows growing fell falls falling sent sends sending
chose chooses choosing spoke speaks speaking rose rises rising cost costs drew draws drawing stood stands
quickly slowly really finally usually nearly simply clearly certainly especially recently directly generally
mostly easily already actually probably exactly together instead however therefore because although unless
whether while where when which whom whose whatever whenever everyone everything someone something anyone
nobody nothing nowhere everywhere somewhere inside outside above below behind beside beyond near during until
since against among around without within along across toward towards upon onto into through throughout
teacher teachers student doctor doctors friend friends father brother sister daughter husband parents
children's king queen prince army soldier soldiers officer leader leaders member citizen worker workers farmer
farmers city's cities country's countries street streets road roads bridge building buildings hospital market
station train trains plane ship ships car cars bank banks hotel restaurant kitchen garden tree trees flower
flowers animal animals dog dogs cat horse horses bird birds fish food bread milk coffee tea wine water's fire
sun moon star stars sky sea ocean rain snow wind weather stone gold silver iron paper table chair bed window
wall floor box bag ball card cards letter letters phone computer machine engine energy price prices cost market
trade money's budget tax taxes plan plans rule rules law's laws vote votes election elections campaign council
committee minister ministers policy's decision decisions agreement agreements meeting meetings support issue
issues process system's value values rate rates growth increase decrease percent million millions billion
thousand hundred dozen several various certain particular similar whole entire single double third fourth
fifth sixth seventh eighth ninth tenth eleventh twelfth hundredth number's numbers figure figures total
average amount amounts part parts piece pieces side sides top bottom middle edge end's beginning start finish
café naïve über résumé fiancée façade déjà coöperate señor São Zürich München Québec Besançon""".split()
)
SYLLABLES = tuple(
    "ka ro len dor mi sa tel vin bar os ur an el ta ri mon gar del sen pol quin rex zor blat fen wick ham ton "
    "ford ley by ster ville burg berg field port mouth wood land ia ar er en ion is ic al ous ment ness".split()
)
SUFFIXES = ("s", "ed", "ing", "er", "ers", "ly", "ness", "ment", "tion", "able", "ist", "ism", "ful", "less")
FILLER = "<standin_unused_{}>"
CORPUS_SEED = 20240607
TRAINED_TOKENS = 8000  # BPE vocabulary trained on the generated text; the rest of the length is filler


# ---------------------------------------------------------------------------------------
# Generated English
# ---------------------------------------------------------------------------------------
def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _word(rng: random.Random, word: str) -> str:
    """``word`` (drawn by frequency), or in a few cases an invented name, a number or ``word`` with a suffix."""
    roll = rng.random()
    if roll < 0.06:
        return _name(rng)
    if roll < 0.10:
        return str(rng.choice((rng.randint(1, 99), rng.randint(1800, 2030), rng.randint(100, 99999))))
    if roll < 0.16 and word.isalpha() and len(word) > 3:
        return word + rng.choice(SUFFIXES)
    return word


def english_text(n_sentences: int = 12000, seed: int = CORPUS_SEED) -> list[str]:
    """``n_sentences`` English-like sentences from :data:`WORDS` with Zipf-like word frequencies, invented
    names and numbers, commas and sentence punctuation; the same ``seed`` gives the same sentences."""
    rng = random.Random(seed)
    cum_weights = list(itertools.accumulate(1.0 / (rank + 8) for rank in range(len(WORDS))))
    sentences = []
    for _ in range(n_sentences):
        words = [_word(rng, w) for w in rng.choices(WORDS, cum_weights=cum_weights, k=rng.randint(4, 18))]
        if len(words) > 6 and rng.random() < 0.4:
            words[rng.randint(2, len(words) - 3)] += ","
        if rng.random() < 0.1:
            words.insert(0, rng.choice(('"', "(")) + words.pop(0))
            words[-1] += '"' if words[0][0] == '"' else ")"
        text = " ".join(words)
        text = text[0].upper() + text[1:] if text[0].isalpha() else text[0] + text[1:2].upper() + text[2:]
        sentences.append(text + rng.choice((".", ".", ".", "?", "!", ":", ";")))
    # paragraphs of a few sentences, some separated by newlines, so spaces and line breaks get tokens too
    return [(" " if i % 3 else "\n").join(sentences[j : j + 4]) for i, j in enumerate(range(0, len(sentences), 4))]


# ---------------------------------------------------------------------------------------
# Trained BPE, per tokenizer kind
# ---------------------------------------------------------------------------------------
def _pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    if kind == "sentencepiece-bpe":  # as SentencePiece splits for Llama-2: words carry their leading space as ▁,
        # punctuation stays apart from letters (a ▁ may lead it) and digits go one by one
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
                pre_tokenizers.Split(Regex(r"▁?[^\p{L}\p{N}▁\s]+"), behavior="isolated"),
                pre_tokenizers.Digits(individual_digits=True),
            ]
        )
    if kind == "qwen2":  # Qwen2's split pattern (digits one by one), as transformers' Qwen2Tokenizer applies it
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-NeoX: GPT-2's split pattern


@functools.cache
def trained_bpe(kind: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The BPE trained on :func:`english_text` for ``kind`` (``sentencepiece-bpe``, ``qwen2`` or
    ``gpt-neox``): its single characters, its merged tokens (in merge order) and its merges."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer(kind)
    if kind != "sentencepiece-bpe":
        tokenizer.normalizer = normalizers.NFC()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind != "sentencepiece-bpe" else []
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_TOKENS, min_frequency=2, initial_alphabet=sorted(alphabet), show_progress=False
    )
    tokenizer.train_from_iterator(english_text(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    ordered = sorted(model["vocab"], key=model["vocab"].get)
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    merged = {a + b for a, b in merges}
    return tuple(t for t in ordered if t not in merged), tuple(t for t in ordered if t in merged), merges


# ---------------------------------------------------------------------------------------
# Vocabularies laid out as the real ones
# ---------------------------------------------------------------------------------------
def _added_tokens(tok_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's added tokens with its ranges (Mistral's ``[control_n]``) spelt out, by id."""
    tokens = list(tok_spec["added_tokens"])
    for r in tok_spec.get("added_token_ranges", ()):
        for i, token_id in enumerate(range(r["first_id"], r["last_id"] + 1)):
            content = r["content"].format(n=r["first_n"] + i)
            tokens.append({"id": token_id, "content": content, "special": r["special"], "normalized": False})
    return sorted(tokens, key=lambda t: t["id"])


def _fill(vocab: dict[str, int], upto: int) -> None:
    """Append unreachable filler tokens until ``vocab`` holds ids ``0..upto-1``."""
    n = 0
    while len(vocab) < upto:
        filler = FILLER.format(n)
        if filler not in vocab:
            vocab[filler] = len(vocab)
        n += 1


def _sentencepiece_vocab(tok_spec: dict[str, Any], added: list[dict[str, Any]]) -> dict[str, int]:
    """Llama's layout: the special (and control) tokens, the 256 byte tokens, the merged pieces, and the
    single characters last; filler between the pieces and the characters makes the length exact."""
    chars, merged, _ = trained_bpe("sentencepiece-bpe")
    vocab = {t["content"]: t["id"] for t in added}
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) != tok_spec["byte_tokens_from"]:
        raise KilibError("a SentencePiece stand-in spec must list its special tokens as ids 0.. up to its byte tokens")
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    for token in merged:
        vocab.setdefault(token, len(vocab))
    _fill(vocab, tok_spec["length"] - len([c for c in chars if c not in vocab]))
    for token in chars:
        vocab.setdefault(token, len(vocab))
    return vocab


def _byte_level_vocab(tok_spec: dict[str, Any], added: list[dict[str, Any]], kind: str) -> dict[str, int]:
    """The byte-level layout: the added tokens that sit below the first BPE token (GPT-NeoX's
    ``<|endoftext|>`` and ``<|padding|>``), the 256 byte symbols, the merged tokens, then filler up to the
    first added token above them (Qwen2's ``<|endoftext|>``, GPT-NeoX's space runs), which stay added tokens
    outside the BPE vocabulary as in the real files."""
    chars, merged, _ = trained_bpe(kind)
    low: list[dict[str, Any]] = []
    for t in added:
        if t["id"] != len(low):
            break
        low.append(t)
    vocab = {t["content"]: t["id"] for t in low}
    for token in (*chars, *merged):
        vocab.setdefault(token, len(vocab))
    _fill(vocab, min(t["id"] for t in added if t not in low))
    return vocab


def _kind(tok_spec: dict[str, Any]) -> str:
    if tok_spec["kind"] == "sentencepiece-bpe":
        return "sentencepiece-bpe"
    return "qwen2" if tok_spec["class"] == "Qwen2Tokenizer" else "gpt-neox"


# ---------------------------------------------------------------------------------------
# The tokenizer folder
# ---------------------------------------------------------------------------------------
def make_tokenizer(tok_spec: dict[str, Any]):
    """The transformers tokenizer a spec's ``standin.tokenizer`` section describes (not yet saved)."""
    import transformers
    from tokenizers import AddedToken

    kind = _kind(tok_spec)
    added = _added_tokens(tok_spec)
    if kind == "sentencepiece-bpe":
        vocab = _sentencepiece_vocab(tok_spec, added)
    else:
        vocab = _byte_level_vocab(tok_spec, added, kind)
    missing = [a + b for a, b in trained_bpe(kind)[2] if a + b not in vocab]
    if missing:
        raise KilibError(f"the stand-in vocabulary lacks {len(missing)} merged tokens: raise its length")
    kwargs: dict[str, Any] = {
        name: tok_spec[name]
        for name in ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "add_eos_token")
    }
    for name in ("legacy", "padding_side", "add_prefix_space", "errors", "split_special_tokens"):
        if name in tok_spec:
            kwargs[name] = tok_spec[name]
    if tok_spec.get("additional_special_tokens"):
        kwargs["extra_special_tokens"] = list(tok_spec["additional_special_tokens"])
    decoder = {
        t["id"]: AddedToken(t["content"], special=t["special"], normalized=t["normalized"], lstrip=False, rstrip=False)
        for t in added
    }
    tokenizer = getattr(transformers, tok_spec["class"])(
        vocab=vocab,
        merges=list(trained_bpe(kind)[2]),
        added_tokens_decoder=decoder,
        model_max_length=tok_spec["model_max_length"],
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    if tok_spec.get("chat_template"):
        tokenizer.chat_template = tok_spec["chat_template"]
    check_tokenizer(tokenizer, tok_spec)
    return tokenizer


def check_tokenizer(tokenizer, tok_spec: dict[str, Any]) -> None:
    """Fail with a one-line error where ``tokenizer`` does not have the spec's length or added-token ids."""
    if len(tokenizer) != tok_spec["length"]:
        raise KilibError(
            f"the stand-in tokenizer has {len(tokenizer)} entries, its spec {tok_spec['length']}: "
            "fix the spec's length or its added tokens"
        )
    wrong = [
        (t["content"], t["id"])
        for t in _added_tokens(tok_spec)
        if tokenizer.convert_tokens_to_ids(t["content"]) != t["id"]
    ]
    if wrong:
        raise KilibError(f"stand-in tokens at the wrong ids (content, spec id): {wrong[:3]}: fix the spec's tokens")


def build_tokenizer(hub_id: str, folder: str | Path) -> Path:
    """Write ``hub_id``'s stand-in tokenizer (``tokenizer.json``, ``tokenizer_config.json`` and, for a chat
    model, ``chat_template.jinja``) into ``folder``; returns the folder. Loads offline with
    ``AutoTokenizer.from_pretrained(folder)``."""
    from kilib.standin.models import spec  # imported here: kilib.standin.models imports this module to build

    tokenizer = make_tokenizer(spec(hub_id)["standin"]["tokenizer"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder
