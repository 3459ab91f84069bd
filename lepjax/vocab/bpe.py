"""Editing BPE merge lists: priority orders and extension with new pieces.

A BPE vocabulary whose merge rule is "join the adjacent pair whose concatenation is the
highest-priority piece" is described by its pieces in priority order (see
`lepjax.tokenizer.convert.merges_from_order`). A `tokenizer.json` written by another tool has a
merge list of its own, which is kept verbatim: extension only inserts merges, so the source's
merges, and with priority `after` its encoding of text without new pieces, are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

from lepjax.tokenizer.convert import merges_from_order


def order_from_merges(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> list[str]:
    """Priority order of a `tokenizer.json` BPE: pieces no merge produces (by id), then merge results."""
    produced: dict[str, int] = {}
    for r, (a, b) in enumerate(merges):
        produced.setdefault(a + b, r)
    base = sorted((p for p in vocab if p not in produced), key=vocab.__getitem__)
    return base + sorted(produced, key=produced.__getitem__)


def extend_merges(merges: Sequence[tuple[str, str]], order: Sequence[str], new: Sequence[str],
                  priority: str) -> list[tuple[str, str]]:
    """`merges` with those of `new` pieces inserted, before (`before`) or after (`after`) them all.

    `order` is the source's priority order. Merges making a new piece are every split of it into
    two known pieces (`merges_from_order` on the extended order); merges making an old piece from
    a new part go just before that piece's first source merge (where its priority is).
    """
    full = list(new) + list(order) if priority == "before" else list(order) + list(new)
    fresh = set(new)
    made_new, old_with_new = [], {}
    for a, b in merges_from_order(full):
        if a + b in fresh:
            made_new.append((a, b))
        elif a in fresh or b in fresh:
            old_with_new.setdefault(a + b, []).append((a, b))
    out = made_new if priority == "before" else []
    for a, b in merges:
        out.extend(old_with_new.pop(a + b, ()))
        out.append((a, b))
    for rest in old_with_new.values():
        out.extend(rest)
    if priority == "after":
        out.extend(made_new)
    return out
