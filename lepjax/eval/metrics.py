"""Text metrics of generation tasks: exact match, token F1, ROUGE-L and chrF.

Exact match and F1 follow the SQuAD evaluation script, made multilingual the way MLQA did:
lower-case, drop punctuation (every Unicode punctuation character, not only ASCII), drop the
articles of English ("a", "an", "the") only for English, and split on white space. Languages
written without spaces between words (Japanese, Thai, Chinese) are compared character by
character instead. With several gold answers an example scores its best match.

ROUGE-L is the F-measure of the longest common subsequence of tokens (lower-cased runs of
letters, combining marks and digits; characters for the languages above), computed here rather
than with `rouge_score`, whose default tokenizer drops every non-ASCII character. chrF is sacrebleu's (character 6-grams, beta 2).
All scores lie in [0, 1] except chrF, in [0, 100] as sacrebleu reports it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

CHARACTER_LANGUAGES = frozenset({"ja", "th", "zh", "my", "km", "lo"})
ARTICLES = {"en": re.compile(r"\b(a|an|the)\b")}


def normalize_answer(text: str, lang: str = "en") -> str:
    """SQuAD-style normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if lang in ARTICLES:
        text = ARTICLES[lang].sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: str = "en") -> list[str]:
    """Tokens of a normalised answer (characters for languages written without spaces)."""
    norm = normalize_answer(text, lang)
    if lang in CHARACTER_LANGUAGES:
        return [ch for ch in norm if not ch.isspace()]
    return norm.split()


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str], lang: str = "en") -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction, lang)
    return float(any(pred == normalize_answer(g, lang) for g in _golds(golds)))


def token_f1(prediction: str, golds: str | Sequence[str], lang: str = "en") -> float:
    """Best bag-of-tokens F1 of the prediction against the gold answers."""
    pred = answer_tokens(prediction, lang)
    best = 0.0
    for gold in _golds(golds):
        ref = answer_tokens(gold, lang)
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def _word_char(ch: str) -> bool:
    # Letters, combining marks (Devanagari and Thai vowel signs, ...) and digits make words.
    return ch == "_" or unicodedata.category(ch)[0] in "LMN"


def rouge_tokens(text: str, lang: str = "en") -> list[str]:
    """Tokens ROUGE-L compares: lower-cased word runs (characters for unspaced scripts)."""
    words, run = [], []
    for ch in text.lower() + " ":
        if _word_char(ch):
            run.append(ch)
        elif run:
            words.append("".join(run))
            run = []
    if lang in CHARACTER_LANGUAGES:
        return [ch for w in words for ch in w]
    return words


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, golds: str | Sequence[str], lang: str = "en") -> float:
    """Best ROUGE-L F-measure (LCS precision and recall, harmonic mean) over the gold texts."""
    pred = rouge_tokens(prediction, lang)
    best = 0.0
    for gold in _golds(golds):
        ref = rouge_tokens(gold, lang)
        lcs = lcs_length(pred, ref) if pred and ref else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def chrf(prediction: str, golds: str | Sequence[str]) -> float:
    """Sentence-level chrF (0..100) of one prediction against its reference(s)."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, _golds(golds)).score)


def corpus_chrf(predictions: Sequence[str], golds: Sequence[str | Sequence[str]]) -> float:
    """Corpus-level chrF (0..100): n-gram statistics summed over examples, then scored.

    Examples with several references use their first one.
    """
    import sacrebleu

    refs = [_golds(g)[0] for g in golds]
    return float(sacrebleu.corpus_chrf(list(predictions), [refs]).score)


EXAMPLE_METRICS = {"exact_match": exact_match, "f1": token_f1, "rouge_l": rouge_l}
GENERATION_METRICS = ("exact_match", "f1", "rouge_l", "chrf")
