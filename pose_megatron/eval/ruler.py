"""RULER's synthetic tasks (Hsieh et al., 2024), generated offline at exact token lengths.

Task families, their configurations (``TASKS``, named as in RULER's ``synthetic.yaml``), the
templates (RULER's ``scripts/data/synthetic/constants.py``) and the generation rules follow
NVIDIA/RULER:

- NIAH (``niah_*``): needles "One of the special magic {values} for {key} is: {value}." hidden in
  a haystack of noise sentences, real text (RULER: Paul Graham essays; here ``--haystack`` or the
  bundled corpus) or distractor needles; keys and values are adjective-noun words, 7-digit numbers
  or UUIDs; multi-key adds distractor keys, multi-value asks all values of one key, multi-query
  several keys at once. Needle depths are drawn without replacement from RULER's 40-point grid
  0..100 %.
- Variable tracking (``vt``): a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... among noise lines,
  asked for every variable holding the value, with one solved example (RULER's ICL, ~500 tokens).
- Common words (``cwe``): a numbered word list in which 10 words appear 30 times (6 below 4096
  tokens) and the others 3 (1), with one solved example; asked for the 10 most common.
- Frequent words (``fwe``): coded 6-letter words with Zipf counts (alpha 2, the top word ``...``
  is noise); asked for the three most frequent.

Exact length: a prompt is the concatenation of separately tokenised pieces (the template head,
one piece per haystack unit / needle / list entry, the question and answer prefix), so its
token count is a sum the builder controls; the last haystack piece is cut token-wise (or the
context padded with more haystack) to land on the requested length exactly, BOS (or the chat
template's own opening) included. The model is given those ids; ``Sample.text`` is their decoding.

Departures from RULER, all deliberate:
- the length is the prompt's (RULER's ``max_seq_length`` also counts the tokens to generate);
- noise and distractor-needle haystacks use the depth grid too (RULER draws positions uniformly
  among their lines, which the grid approximates), and depth is measured in tokens of haystack;
- real-text haystacks start at a seeded random sentence per sample (RULER starts every sample at
  the essay's beginning), sentences split with a regex instead of NLTK, whitespace collapsed as in
  RULER, over-long "sentences" (code) cut into 40-word units;
- a chat template wraps the task text alone (RULER applies its singular/plural rewrite to the
  whole prompt, which would also rewrite the template's system text), and CWE's solved example
  sits inside the same user message (RULER repeats the full model template for it);
- CWE pads the last few tokens with words that appear once (numbering continues), FWE with the
  noise word ``...``; neither changes the answer.
"""

from __future__ import annotations

import os
import re
import uuid
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pose_megatron.eval.passkey import FILLER as NOISE  # RULER's noise sentence, the same text
from pose_megatron.eval.prompting import ChatFrame, largest_fitting

# RULER's task templates: (template, answer_prefix, tokens_to_generate).
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all "
    "the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = (" The special magic {type_needle_v} for {query} mentioned in the provided "
                      "text are")
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
    "variables are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
    "words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three "
    "most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. "
    "Please ignore the dots '....'. What are the three most frequently appeared words in the above "
    "coded text?"
)
FWE_ANSWER_PREFIX = (
    " Answer: According to the coded text above, the three most frequently appeared words are:"
)
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}

DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True))]  # RULER's grid
VT_ICL_TOKENS = 500  # RULER builds its solved variable-tracking example to 500 tokens
CWE_FEWSHOT_SWITCH = 4096  # below this length RULER uses a smaller example and repeat counts
UNIT_WORDS = 40  # real-text sentences longer than this are cut into units of this many words


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str  # niah, vt, cwe, fwe
    params: Dict[str, object] = field(default_factory=dict)

    @property
    def tokens_to_generate(self) -> int:
        return TOKENS_TO_GENERATE[self.family]


def _niah(name, haystack, key="words", value="numbers", k=1, v=1, q=1) -> TaskSpec:
    return TaskSpec(name, "niah", {"haystack": haystack, "type_needle_k": key,
                                   "type_needle_v": value, "num_needle_k": max(k, q),
                                   "num_needle_v": v, "num_needle_q": q})


# RULER's synthetic.yaml without the QA tasks (they need downloaded SQuAD/HotpotQA).
TASKS: Dict[str, TaskSpec] = {t.name: t for t in [
    _niah("niah_single_1", "noise"),
    _niah("niah_single_2", "essay"),
    _niah("niah_single_3", "essay", value="uuids"),
    _niah("niah_multikey_1", "essay", k=4),
    _niah("niah_multikey_2", "needle"),
    _niah("niah_multikey_3", "needle", key="uuids", value="uuids"),
    _niah("niah_multivalue", "essay", v=4),
    _niah("niah_multiquery", "essay", q=4),
    TaskSpec("vt", "vt", {"num_chains": 1, "num_hops": 4}),
    TaskSpec("cwe", "cwe", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    TaskSpec("fwe", "fwe", {"alpha": 2.0, "coded_wordlen": 6}),
]}


# ----------------------------------------------------------------------------------------------
# Word sources


@lru_cache(maxsize=None)
def _wordlist(name: str) -> Tuple[str, ...]:
    # wonderwords' lists are RULER's source of key words and CWE words.
    try:
        assets = resources.files("wonderwords.assets")
    except ModuleNotFoundError:
        raise ValueError("RULER's word lists come from the wonderwords package: "
                         "pip install wonderwords") from None
    text = assets.joinpath(name).read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip())


def needle_words() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(adjectives, nouns): a NIAH word key/value is "adjective-noun"."""
    return _wordlist("adjectivelist.txt"), _wordlist("nounlist.txt")


@lru_cache(maxsize=None)
def cwe_words() -> Tuple[str, ...]:
    """RULER's CWE vocabulary: nouns, adjectives and verbs, deduplicated and sorted (the few
    entries with a space are left out, so a list entry is one word)."""
    words = set(_wordlist("nounlist.txt")) | set(_wordlist("adjectivelist.txt"))
    return tuple(sorted(w for w in words | set(_wordlist("verblist.txt")) if " " not in w))


def random_needle(kind: str, rng: np.random.Generator) -> str:
    if kind == "numbers":
        return str(int(rng.integers(10 ** 6, 10 ** 7)))  # 7 digits
    if kind == "words":
        adjs, nouns = needle_words()
        return f"{adjs[int(rng.integers(len(adjs)))]}-{nouns[int(rng.integers(len(nouns)))]}"
    if kind == "uuids":
        return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


# ----------------------------------------------------------------------------------------------
# Haystacks


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def text_units(texts: Sequence[str], unit_words: int = UNIT_WORDS) -> List[str]:
    """Real text as RULER's essay haystack: whitespace collapsed, split into sentences (units of
    at most ``unit_words`` words)."""
    units: List[str] = []
    for text in texts:
        flat = " ".join(text.split())
        for sentence in _SENTENCE_END.split(flat):
            words = sentence.split(" ")
            units.extend(" ".join(words[i:i + unit_words])
                         for i in range(0, len(words), unit_words) if sentence)
    return units


@dataclass
class Haystack:
    """The real-text units NIAH's "essay" haystacks draw from (``--haystack``)."""

    units: List[str]
    source: str

    def __post_init__(self):
        if not self.units:
            raise ValueError(f"--haystack {self.source}: no text")

    def stream(self, rng: np.random.Generator) -> Iterator[str]:
        """Units from a random start, wrapping around (RULER repeats a too-short essay)."""
        i = int(rng.integers(len(self.units)))
        while True:
            yield self.units[i]
            i = (i + 1) % len(self.units)


HAYSTACK_CHARS = 4_000_000  # real text read for the haystack: ~1M tokens, plenty to start from


def load_haystack(paths: Sequence[str], decode: Callable[[Sequence[int]], str],
                  text_field: str = "text", max_chars: int = HAYSTACK_CHARS) -> Haystack:
    """Real text from ``paths`` (text files, JSONL, Megatron .bin/.idx prefixes, decoded with the
    model's tokenizer), or the bundled corpus (the Python standard library's sources) when none,
    up to ``max_chars`` characters."""
    from pose_megatron.data.corpus import stdlib_documents
    from pose_megatron.eval.documents import _indexed_prefix, iter_indexed, iter_text

    def texts() -> Iterator[str]:
        if not paths:
            yield from (text for _, text in stdlib_documents())
        for path in paths:
            prefix = _indexed_prefix(path)
            if prefix is not None:
                yield from (decode(d.tolist()) for d in iter_indexed(prefix))
            elif os.path.isfile(path):
                yield from iter_text(path, text_field)
            else:
                raise FileNotFoundError(f"--haystack {path}: neither a file nor a Megatron "
                                        "prefix with .bin and .idx")

    chosen, total = [], 0
    for text in texts():
        chosen.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return Haystack(text_units(chosen), ", ".join(paths) or "bundled corpus (stdlib sources)")


# ----------------------------------------------------------------------------------------------
# Exact-length assembly


class Encoder:
    """``encode`` with a cache: haystack units and list entries repeat across samples."""

    def __init__(self, encode: Callable[[str], List[int]]):
        self._encode = lru_cache(maxsize=1 << 16)(lambda text: tuple(encode(text)))

    def __call__(self, text: str) -> List[int]:
        return list(self._encode(text))

    def count(self, text: str) -> int:
        return len(self._encode(text))


@dataclass
class Sample:
    task: str
    length: int
    index: int
    input_ids: List[int]
    answers: List[str]
    text: str
    depths: List[float] = field(default_factory=list)  # requested, 0..1, one per needle
    needle_positions: List[int] = field(default_factory=list)  # token offsets into input_ids
    info: Dict[str, object] = field(default_factory=dict)


@dataclass
class Frame:
    """What surrounds the context: [BOS] or the chat template's opening, the task text around
    ``{context}`` and the answer prefix after the template's assistant opening."""

    prefix_ids: List[int]
    head: str
    tail: str

    def ids(self, enc: Encoder, context: List[List[int]]) -> List[int]:
        out = list(self.prefix_ids) + enc(self.head)
        for piece in context:
            out.extend(piece)
        return out + enc(self.tail)

    def budget(self, enc: Encoder, length: int) -> int:
        return length - len(self.prefix_ids) - enc.count(self.head) - enc.count(self.tail)


def make_frame(template: str, answer_prefix: str, chat: Optional[ChatFrame], bos_id: Optional[int],
               preamble: str = "", head_end: str = "") -> Frame:
    """Split the filled ``template`` at ``{context}``; ``head_end`` is removed from the end of the
    head (it moves into the first context piece's separator)."""
    head, tail = template.split("{context}")
    if head_end:
        assert head.endswith(head_end)
        head = head[: len(head) - len(head_end)]
    head = preamble + head
    if chat is not None:
        return Frame([], chat.before + head, tail + chat.after + answer_prefix)
    if bos_id is None:
        raise ValueError("the tokenizer has no BOS token to start the prompt with")
    return Frame([int(bos_id)], head, tail + answer_prefix)


def fill_haystack(enc: Encoder, units: Iterator[str], sep: str, budget: int) -> List[List[int]]:
    """Haystack pieces (``sep + unit``, tokenised alone) totalling exactly ``budget`` tokens: the
    last is cut token-wise."""
    pieces: List[List[int]] = []
    total = 0
    while total < budget:
        piece = enc(sep + next(units))
        pieces.append(piece)
        total += len(piece)
    if total > budget:
        pieces[-1] = pieces[-1][: len(pieces[-1]) - (total - budget)]
    return [p for p in pieces if p]


def insert_at_depths(hay: List[List[int]], needles: List[List[int]], depths: Sequence[float]
                     ) -> Tuple[List[List[int]], List[int]]:
    """Put each needle at the haystack piece boundary nearest ``depth`` x haystack tokens; returns
    the pieces and each needle's token offset within the context."""
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in hay])])
    total = int(bounds[-1])
    slots = [int(np.argmin(np.abs(bounds - d * total))) for d in depths]
    order = sorted(range(len(needles)), key=lambda i: (slots[i], i))
    out: List[List[int]] = []
    offsets = [0] * len(needles)
    pos, nxt = 0, 0
    for b in range(len(hay) + 1):
        while nxt < len(order) and slots[order[nxt]] == b:
            offsets[order[nxt]] = pos
            out.append(needles[order[nxt]])
            pos += len(needles[order[nxt]])
            nxt += 1
        if b < len(hay):
            out.append(hay[b])
            pos += len(hay[b])
    return out, offsets


def _too_short(task: str, length: int, needed: int) -> ValueError:
    return ValueError(f"{task}: length {length} is too short; the prompt needs {needed} tokens "
                      "without any haystack")


# ----------------------------------------------------------------------------------------------
# Generators


@dataclass
class Builder:
    """Everything a sample depends on besides (task, length, index, seed)."""

    encode: Callable[[str], List[int]]
    decode: Callable[[Sequence[int]], str]
    bos_id: Optional[int]
    chat: Optional[ChatFrame] = None
    haystack: Optional[Haystack] = None
    seed: int = 0

    def __post_init__(self):
        self.enc = Encoder(self.encode)

    def rng(self, task: str, length: int, index: int, salt: int = 0) -> np.random.Generator:
        """Sample (task, length, index) is the same whatever else runs."""
        return np.random.default_rng([self.seed, zlib.crc32(task.encode()), length, index, salt])

    def build(self, task: str, length: int, index: int) -> Sample:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        spec = TASKS[task]
        make = {"niah": self._niah, "vt": self._vt, "cwe": self._cwe, "fwe": self._fwe}
        sample = make[spec.family](spec, length, index, self.rng(task, length, index))
        assert len(sample.input_ids) == length, (task, length, len(sample.input_ids))
        return sample

    def _sample(self, spec, length, index, frame, context, answers, **kw) -> Sample:
        ids = frame.ids(self.enc, context)
        return Sample(spec.name, length, index, ids, answers, self.decode(ids), **kw)

    # NIAH ------------------------------------------------------------------------------------

    def _niah(self, spec: TaskSpec, length: int, index: int, rng) -> Sample:
        p = spec.params
        type_k, type_v = p["type_needle_k"], p["type_needle_v"]
        keys, values, needles = [], [], []
        for _ in range(p["num_needle_k"]):
            keys.append(random_needle(type_k, rng))
            values.append([random_needle(type_v, rng) for _ in range(p["num_needle_v"])])
            needles += [NIAH_NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=v)
                        for v in values[-1]]
        rng.shuffle(needles)
        asked = rng.choice(len(keys), p["num_needle_q"], replace=False).tolist()
        queries = [keys[i] for i in asked]
        answers = [v for i in asked for v in values[i]]
        query = queries[0] if len(queries) == 1 else \
            ", ".join(queries[:-1]) + ", and " + queries[-1]
        template, prefix, shown_v = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, type_v
        if p["num_needle_q"] * p["num_needle_v"] == 1:  # RULER's singular wording
            template, prefix = (t.replace("Some", "A").replace("are all", "is")
                                .replace("are", "is").replace("answers", "answer")
                                for t in (template, prefix))
            shown_v = type_v[:-1]
        fill = dict(type_needle_v=shown_v, query=query)
        haystack = p["haystack"]
        if haystack == "essay":
            if self.haystack is None:
                raise ValueError(f"{spec.name} needs a real-text haystack (--haystack)")
            sep, units, head_end = " ", self.haystack.stream(rng), ""
        elif haystack == "noise":
            sep, units, head_end = "\n", _repeat(NOISE), "\n"
        else:  # distractor needles with their own random keys and values
            sep, units, head_end = "\n", _distractors(type_k, type_v, rng), "\n"
        frame = make_frame(template.format(context="{context}", **fill), prefix.format(**fill),
                           self.chat, self.bos_id, head_end=head_end)
        depths = [int(d) / 100 for d in rng.choice(DEPTHS, len(needles), replace=False)]
        return self._with_needles(spec, length, index, frame, sep, units, needles, depths, answers,
                                  info={"keys": queries, "haystack": haystack})

    def _with_needles(self, spec, length, index, frame, sep, units, needles, depths, answers,
                      info) -> Sample:
        needle_ids = [self.enc(sep + n) for n in needles]
        budget = frame.budget(self.enc, length)
        hay_budget = budget - sum(len(n) for n in needle_ids)
        if hay_budget < 0:
            raise _too_short(spec.name, length, length - hay_budget)
        hay = fill_haystack(self.enc, units, sep, hay_budget)
        context, offsets = insert_at_depths(hay, needle_ids, depths)
        start = len(frame.prefix_ids) + self.enc.count(frame.head)
        return self._sample(spec, length, index, frame, context, answers, depths=depths,
                            needle_positions=[start + o for o in offsets], info=info)

    # Variable tracking -----------------------------------------------------------------------

    def _vt_chain(self, rng, num_hops: int, name_len: int) -> Tuple[List[str], List[str], str]:
        names: List[str] = []
        while len(names) < num_hops + 1:
            name = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, name_len))
            if name not in names:
                names.append(name)
        value = str(int(rng.integers(10000, 99999)))
        chain = [f"VAR {names[0]} = {value}"]
        chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
        return names, chain, value

    def _vt_icl(self, num_hops: int, rng) -> str:
        """RULER's solved example: a noise-haystack chain (3-letter names) built to 500 tokens,
        its answer appended."""
        names, chain, value = self._vt_chain(rng, num_hops, 3)
        depths = sorted(rng.choice(DEPTHS, len(chain), replace=False) / 100)

        def text(n_noise: int) -> str:
            lines = [NOISE] * n_noise
            for j, (line, d) in enumerate(zip(chain, depths)):
                lines.insert(int(round(d * n_noise)) + j, line)
            prompt = VT_TEMPLATE.format(context="\n".join(lines), query=value,
                                        num_v=num_hops + 1)
            return (prompt + VT_ANSWER_PREFIX.format(num_v=num_hops + 1, query=value) + " "
                    + " ".join(names) + "\n")

        per_line = max(1, self.enc.count("\n" + NOISE))
        n = largest_fitting(lambda k: self.enc.count(text(k)), VT_ICL_TOKENS,
                            VT_ICL_TOKENS // per_line)
        return text(max(n, 0))

    def _vt(self, spec: TaskSpec, length: int, index: int, rng) -> Sample:
        hops = int(spec.params["num_hops"])
        names, chain, value = self._vt_chain(rng, hops, 5)
        icl = self._vt_icl(hops, rng)
        fill = dict(query=value, num_v=hops + 1)
        frame = make_frame(VT_TEMPLATE.format(context="{context}", **fill),
                           VT_ANSWER_PREFIX.format(**fill), self.chat, self.bos_id,
                           preamble=icl + "\n", head_end="\n")
        depths = sorted(int(d) / 100 for d in rng.choice(DEPTHS, len(chain), replace=False))
        return self._with_needles(spec, length, index, frame, "\n", _repeat(NOISE), chain,
                                  depths, names, info={"value": value})

    # Common words ----------------------------------------------------------------------------

    def _cwe(self, spec: TaskSpec, length: int, index: int, rng) -> Sample:
        p = spec.params
        num_cw = int(p["num_cw"])
        pool = [cwe_words()[i] for i in rng.permutation(len(cwe_words()))]
        small = length < CWE_FEWSHOT_SWITCH
        ex_n, ex_cr, ex_ur = (20, 3, 1) if small else (40, 10, 3)
        cr, ur = (6, 1) if small else (int(p["freq_cw"]), int(p["freq_ucw"]))
        ex_words = pool[:ex_n]
        pool = pool[ex_n:]
        ex_list = _cwe_list(ex_words, num_cw, ex_cr, ex_ur, rng)
        numbered = lambda ws: " ".join(f"{i + 1}. {w}" for i, w in enumerate(ws))  # noqa: E731
        example = (CWE_TEMPLATE.format(context=numbered(ex_list)) + CWE_ANSWER_PREFIX + " "
                   + numbered(ex_words[:num_cw]))
        frame = make_frame(CWE_TEMPLATE, CWE_ANSWER_PREFIX, self.chat, self.bos_id,
                           preamble=example + "\n", head_end="\n")
        budget = frame.budget(self.enc, length)
        if budget < 0:
            raise _too_short(spec.name, length, length - budget)

        def entry_tokens(n_words: int) -> int:  # the list's length does not depend on its order
            n_entries = num_cw * cr + (n_words - num_cw) * ur
            words = pool[:num_cw] * cr + pool[num_cw:n_words] * ur
            return (sum(self.enc.count(_cwe_number(i)) for i in range(n_entries))
                    + sum(self.enc.count(" " + w) for w in words))

        if entry_tokens(num_cw) > budget:
            raise _too_short(spec.name, length, length - budget + entry_tokens(num_cw))
        per_word = max(1, entry_tokens(num_cw + 1) - entry_tokens(num_cw))
        n_words = num_cw + max(0, largest_fitting(lambda k: entry_tokens(num_cw + k), budget,
                                                  (budget - entry_tokens(num_cw)) // per_word))
        if n_words >= len(pool):
            raise ValueError(f"cwe: length {length} needs more distinct words than the "
                             f"{len(cwe_words())}-word list holds")
        words = _cwe_list(pool[:n_words], num_cw, cr, ur, rng)
        context = []
        for i, w in enumerate(words):
            context += [self.enc(_cwe_number(i)), self.enc(" " + w)]
        fresh = iter(pool[n_words:])  # padding: words that appear once, numbering continues
        pad_budget = budget - sum(len(c) for c in context)
        pads = (f"{_cwe_number(len(words) + j)} {next(fresh)}" for j in range(1 << 30))
        context += fill_haystack(self.enc, pads, "", pad_budget)
        return self._sample(spec, length, index, frame, context, list(pool[:num_cw]),
                            info={"distinct_words": n_words, "repeats": [cr, ur]})

    # Frequent words --------------------------------------------------------------------------

    def _fwe(self, spec: TaskSpec, length: int, index: int, rng) -> Sample:
        p = spec.params
        alpha, wordlen = float(p["alpha"]), int(p["coded_wordlen"])
        vocab_size = max(4, (length - TOKENS_TO_GENERATE["fwe"]) // 50)  # RULER's choice
        vocab: List[str] = []
        seen = set()
        while len(vocab) < vocab_size:
            w = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, wordlen))
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        vocab[0] = "..."  # the top-ranked word is noise
        ranks = np.arange(1, vocab_size + 1)
        weights = ranks ** -alpha / _zeta(alpha)
        frame = make_frame(FWE_TEMPLATE, FWE_ANSWER_PREFIX, self.chat, self.bos_id, head_end=" ")
        budget = frame.budget(self.enc, length)
        if budget < 0:
            raise _too_short(spec.name, length, length - budget)
        word_tokens = [self.enc.count(" " + w) for w in vocab]

        def counts(n_words: int) -> np.ndarray:
            return (n_words * weights).astype(int)

        def n_tokens(n_words: int) -> int:
            return int(np.dot(counts(n_words), word_tokens))

        n = largest_fitting(n_tokens, budget, budget // max(1, word_tokens[1]))
        words = [w for w, c in zip(vocab, counts(n)) for _ in range(int(c))]
        rng.shuffle(words)
        context = [self.enc(" " + w) for w in words]
        used = sum(len(c) for c in context)
        context += fill_haystack(self.enc, _repeat("..."), " ", budget - used)
        return self._sample(spec, length, index, frame, context, vocab[1:4],
                            info={"words": n})


def _cwe_number(i: int) -> str:
    # The first entry opens the list on the template's line break.
    return f"\n{i + 1}." if i == 0 else f" {i + 1}."


def _cwe_list(words: Sequence[str], num_cw: int, common_repeats: int, uncommon_repeats: int,
              rng) -> List[str]:
    items = list(words[:num_cw]) * common_repeats + list(words[num_cw:]) * uncommon_repeats
    return [items[i] for i in rng.permutation(len(items))]


def _repeat(text: str) -> Iterator[str]:
    while True:
        yield text


def _distractors(type_k: str, type_v: str, rng) -> Iterator[str]:
    while True:
        yield NIAH_NEEDLE.format(type_needle_v=type_v, key=random_needle(type_k, rng),
                                 value=random_needle(type_v, rng))


def _zeta(alpha: float, terms: int = 100000) -> float:
    """Riemann zeta for alpha > 1 (RULER uses scipy's): partial sum plus the integral tail."""
    k = np.arange(1, terms + 1, dtype=np.float64)
    return float(np.sum(k ** -alpha) + terms ** (1 - alpha) / (alpha - 1))
