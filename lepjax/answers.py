"""Comparing a predicted answer with gold answers: exact match, accuracy and token F1.

The one definition `lepjax.eval` (prompt tasks) and `lepjax.augment.fiat_infer` (FIAT) both
report. Exact match and F1 follow the SQuAD evaluation script, made multilingual the way MLQA
did: lower-case, drop punctuation (every Unicode punctuation character, not only ASCII), drop the
articles of English ("a", "an", "the") only for English, and split on white space. Languages
written without spaces between words (Japanese, Thai, Chinese) are compared character by
character instead. Accuracy is the strict label match of classification: the stripped prediction
is one of the stripped gold strings, case and punctuation included. With several gold answers an
example scores its best match. All scores lie in [0, 1].
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


def golds_of(golds: str | Sequence[str]) -> list[str]:
    """One gold answer or several, as a list."""
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str], lang: str = "en") -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction, lang)
    return float(any(pred == normalize_answer(g, lang) for g in golds_of(golds)))


def accuracy(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 when the stripped prediction is a stripped gold string exactly, else 0.0."""
    return float(prediction.strip() in {g.strip() for g in golds_of(golds)})


def token_f1(prediction: str, golds: str | Sequence[str], lang: str = "en") -> float:
    """Best bag-of-tokens F1 of the prediction against the gold answers."""
    pred = answer_tokens(prediction, lang)
    best = 0.0
    for gold in golds_of(golds):
        ref = answer_tokens(gold, lang)
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best
