"""Text metrics of generation tasks: exact match, token F1, ROUGE-L and chrF.

Exact match and token F1 are those of lepjax.answers (SQuAD's, made multilingual as MLQA did),
which FIAT inference reports too. ROUGE-L is the F-measure of the longest common subsequence of
tokens (lower-cased runs of letters, combining marks and digits; characters for the languages
written without spaces), computed here rather than with `rouge_score`, whose default tokenizer
drops every non-ASCII character. chrF is sacrebleu's (character 6-grams, beta 2).
All scores lie in [0, 1] except chrF, in [0, 100] as sacrebleu reports it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from lepjax.answers import CHARACTER_LANGUAGES, exact_match, golds_of, token_f1


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
    for gold in golds_of(golds):
        ref = rouge_tokens(gold, lang)
        lcs = lcs_length(pred, ref) if pred and ref else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def chrf(prediction: str, golds: str | Sequence[str]) -> float:
    """Sentence-level chrF (0..100) of one prediction against its reference(s)."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, golds_of(golds)).score)


def corpus_chrf(predictions: Sequence[str], golds: Sequence[str | Sequence[str]]) -> float:
    """Corpus-level chrF (0..100): n-gram statistics summed over examples, then scored.

    Examples with several references use their first one.
    """
    import sacrebleu

    refs = [golds_of(g)[0] for g in golds]
    return float(sacrebleu.corpus_chrf(list(predictions), [refs]).score)


EXAMPLE_METRICS = {"exact_match": exact_match, "f1": token_f1, "rouge_l": rouge_l}
GENERATION_METRICS = ("exact_match", "f1", "rouge_l", "chrf")
