"""Instruction Pre-Training (Cheng et al. 2024): `lepjax augment instruct-pt`.

  1. Synthesis (resumable by shards of `chains_per_shard` chains, written to chains/): the raw
     texts are split into M = `rounds` parts; chain j is text j of every part. In round r the
     synthesizer (the teacher, greedy, `max_new_tokens`) gets chain j's r-th text after the
     previous round's prompt + its parsed pairs when the whole prompt plus `max_new_tokens` fits
     `context_tokens` (counted with the synthesizer's tokenizer, BOS included), else the text
     alone (then a new document starts). A text too long even alone is cut to fit.
  2. Templify (lepjax.augment.instruct_format): each document -> natural text with a template
     family chosen by a seeded random choice; texts without pairs stay raw.
  3. Mixture: augmented documents, raw texts and general instruction data ("{question}
     {response}") mixed by tokens (student tokenizer) in the ratio of `mixture`: the scarcest
     source is used whole, the others subsampled (seeded) to their share; then shuffled and
     written to text/ ({"source", "text"}) and tokens/ (document records for `lepjax train`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from lepjax.augment import instruct_format as fmt
from lepjax.augment import shards
from lepjax.augment.teacher import Request, Teacher
from lepjax.data import records, sources
from lepjax.data.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("lepjax.augment.instruct_pt")
SOURCES = ("augmented", "raw", "general")


def instruct_pt_section() -> ConfigDict:
    """The `instruct_pt` config section.

    Keys:
      inputs: raw domain text (files, globs, directories; tuple or comma-separated).
      format, text_mode, text_field: how to read them (see `lepjax prepare`: auto | text | jsonl
        | parquet; text files one document per `line` or per blank-line `paragraph`).
      general_inputs: general instruction data, JSONL with `question_field` / `response_field`.
      rounds: M, texts chained into one document (and synthesis rounds).
      max_new_tokens: the synthesizer's output limit per text (greedy).
      context_tokens: the synthesizer's context: prompt + max_new_tokens must fit it.
      synthesizer_tokenizer: tokenizer that counts the budget ("" = teacher.path).
      chains_per_shard: chains per synthesis shard (the unit of resumption).
      seed: template choice and mixture sampling.
      families: template families to choose from: plain, options, reasoning.
      mixture: token ratio of augmented, raw and general text (0 = leave that source out).
      tokenizer: the student's tokenizer (file or model directory) for tokens/.
      add_bos, add_eos: BOS / EOS around each document.
      output_dir: where chains/, text/ and tokens/ go.
      records_per_shard: documents per output shard.
    """
    return ConfigDict(dict(
        inputs=(), format="auto", text_mode="paragraph", text_field="text", general_inputs=(),
        question_field="question", response_field="response", rounds=3, max_new_tokens=400,
        context_tokens=4096, synthesizer_tokenizer="", chains_per_shard=256, seed=0,
        families=fmt.FAMILIES, mixture=dict(augmented=1.0, raw=0.0, general=0.0), tokenizer="",
        add_bos=True, add_eos=True, output_dir="", records_per_shard=10000))


def plan_chains(num_texts: int, rounds: int) -> list[list[int]]:
    """Text indices per chain: the texts split into `rounds` parts, chain j = j-th of each."""
    if rounds <= 0:
        raise shards.AugmentError("instruct_pt.rounds must be positive")
    per_part = math.ceil(num_texts / rounds)
    return [[j + r * per_part for r in range(rounds) if j + r * per_part < num_texts]
            for j in range(per_part)]


class Budget:
    """Counts prompt tokens with the synthesizer's tokenizer; prompt + max_new_tokens <= context."""

    def __init__(self, tokenizer: TextTokenizer, context_tokens: int, max_new_tokens: int,
                 add_bos: bool = True):
        self.tok, self.context, self.max_new = tokenizer, context_tokens, max_new_tokens
        self.bos = 1 if add_bos else 0
        if self.count(fmt.synth_prompt("")) + max_new_tokens > context_tokens:
            raise shards.AugmentError(
                f"instruct_pt.context_tokens={context_tokens} leaves no room for a text after "
                f"max_new_tokens={max_new_tokens}")

    def count(self, prompt: str) -> int:
        """Tokens the synthesizer sees for `prompt`."""
        return len(self.tok.encode_batch([prompt])[0]) + self.bos

    def fits(self, prompt: str) -> bool:
        """Whether `prompt` and the new tokens fit the context."""
        return self.count(prompt) + self.max_new <= self.context

    def fit_text(self, text: str) -> tuple[str, bool]:
        """`text`, cut (by tokens) until its prompt fits alone; and whether it was cut."""
        if self.fits(fmt.synth_prompt(text)):
            return text, False
        ids = self.tok.encode_batch([text])[0]
        keep = self.context - self.max_new - self.count(fmt.synth_prompt(""))
        while keep > 0:
            cut = self.tok.decode(ids[:keep])
            excess = self.count(fmt.synth_prompt(cut)) + self.max_new - self.context
            if excess <= 0:
                return cut, True
            keep -= max(1, excess)
        return "", True


def synthesize(chain_texts: Sequence[Sequence[str]], teacher: Teacher, budget: Budget,
               request: Request, *, shard: int = 0, names: Sequence[str] | None = None,
               bar: Any = None) -> list[list[dict[str, Any]]]:
    """The entries of each chain after all rounds: {"text", "pairs", "linked", "truncated",
    "prompt", "prompt_tokens", "output"} per text."""
    entries: list[list[dict[str, Any]]] = [[] for _ in chain_texts]
    context: list[str | None] = [None] * len(chain_texts)
    names = names or [f"chain {c}" for c in range(len(chain_texts))]
    for r in range(max((len(c) for c in chain_texts), default=0)):
        active = [c for c in range(len(chain_texts)) if r < len(chain_texts[c])]
        prompts, info = [], []
        for c in active:
            text, truncated = budget.fit_text(chain_texts[c][r])
            prompt, linked = fmt.synth_prompt(text), False
            if context[c] is not None and budget.fits(context[c] + prompt):
                prompt, linked = context[c] + prompt, True
            prompts.append(prompt)
            info.append((linked, truncated))
        outputs = shards.complete_shard(teacher, prompts, request, shard,
                                        [f"{names[c]}, round {r}" for c in active])
        for c, prompt, out, (linked, truncated) in zip(active, prompts, outputs, info):
            pairs = fmt.parse_pairs(out)
            entries[c].append({"text": chain_texts[c][r], "pairs": [list(p) for p in pairs],
                               "linked": linked, "truncated": truncated, "prompt": prompt,
                               "prompt_tokens": budget.count(prompt), "output": out})
            context[c] = prompt + fmt.format_pairs(pairs)
        if bar is not None:
            bar.update(len(active))
    return entries


def mix(pools: Mapping[str, Sequence[tuple[str, Sequence[int]]]], weights: Mapping[str, float],
        seed: int) -> list[tuple[str, str, Sequence[int]]]:
    """(source, text, ids) documents whose token counts per source follow `weights`.

    The source with the least data for its weight is taken whole; the others are sampled
    (seeded order, skipping documents that would overshoot more than they fill) to their share.
    The result is shuffled.
    """
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if not active:
        raise shards.AugmentError("instruct_pt.mixture gives every source weight 0")
    for k, w in active.items():
        if not pools.get(k):
            raise shards.AugmentError(f"instruct_pt.mixture.{k}={w} but there is no {k} text "
                                      + ("(set instruct_pt.general_inputs)" if k == "general"
                                         else ""))
    totals = {k: sum(len(ids) for _, ids in pools[k]) for k in active}
    scale = min(totals[k] / w for k, w in active.items())
    rng = random.Random(seed)
    out: list[tuple[str, str, Sequence[int]]] = []
    for k in sorted(active):
        target, got = active[k] * scale, 0
        order = list(range(len(pools[k])))
        rng.shuffle(order)
        for i in order:
            text, ids = pools[k][i]
            if got + len(ids) - target > target - got:
                continue
            out.append((k, text, ids))
            got += len(ids)
    rng.shuffle(out)
    return out


def _read_texts(ic: Any) -> list[str]:
    shim = ConfigDict(dict(inputs=tuple(_list(ic.inputs)), format=ic.format,
                           text_mode=ic.text_mode, text_field=ic.text_field, prompt_field="",
                           target_field="", tfds_name="", tfds_split="train", tfds_data_dir=""))
    if not shim.inputs:
        raise shards.AugmentError("instruct_pt.inputs is empty: name the raw text files")
    texts = [ex["text"] for ex in sources.iterate(shim)]
    if not texts:
        raise shards.AugmentError(f"instruct_pt.inputs {list(shim.inputs)} hold no text")
    return texts


def _list(v: Any) -> list[str]:
    return [p for p in v.split(",") if p.strip()] if isinstance(v, str) else list(v)


def run(cfg: Any, *, teacher: Teacher | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the instruction synthesis `cfg.instruct_pt` describes; returns a summary."""
    from tqdm import tqdm

    ic = cfg.instruct_pt
    for key in ("output_dir", "tokenizer"):
        if not ic[key]:
            raise shards.AugmentError(f"instruct_pt.{key} is not set")
    fmt.templify([], ic.seed, tuple(ic.families))  # validates the families
    texts = _read_texts(ic)
    general = []
    if _list(ic.general_inputs):
        general = [f"{g['question']} {g['response']}" for g in shards.read_jsonl_records(
            _list(ic.general_inputs), {"question": ic.question_field,
                                       "response": ic.response_field},
            what="instruct_pt.general_inputs")]
    tok = load_tokenizer(ic.tokenizer)
    synth_tok_path = ic.synthesizer_tokenizer or cfg.teacher.path
    if not synth_tok_path:
        raise shards.AugmentError("set instruct_pt.synthesizer_tokenizer (or teacher.path): the "
                                  "context budget is counted in the synthesizer's tokens")
    budget = Budget(load_tokenizer(synth_tok_path), ic.context_tokens, ic.max_new_tokens,
                    cfg.teacher.add_bos)
    mixture = {k: float(ic.mixture[k]) for k in SOURCES}
    out = os.path.abspath(ic.output_dir)
    chains_dir, text_dir, tok_dir = shards.prepare_output(out, {
        "method": "instruct_pt", "texts": shards.sha(repr(texts)),
        "general": shards.sha(repr(general)), "rounds": ic.rounds,
        "max_new_tokens": ic.max_new_tokens, "context_tokens": ic.context_tokens,
        "synthesizer_tokenizer": budget.tok.fingerprint(), "chains_per_shard": ic.chains_per_shard,
        "seed": ic.seed, "families": list(ic.families), "mixture": mixture,
        "tokenizer": tok.fingerprint(), "add_bos": ic.add_bos, "add_eos": ic.add_eos,
        "records_per_shard": ic.records_per_shard, "teacher_add_bos": cfg.teacher.add_bos},
        subdirs=("chains", "text", "tokens"), teacher=shards.describe_teacher(cfg))
    plan = plan_chains(len(texts), ic.rounds)
    n = ic.chains_per_shard
    num_chain_shards = math.ceil(len(plan) / n)
    request = Request(max_new_tokens=ic.max_new_tokens, temperature=0.0)
    bar = tqdm(total=len(texts), desc="instruct-pt synthesis", unit="text", disable=not progress)
    start, synthesized = time.perf_counter(), 0
    try:
        for index in range(num_chain_shards):
            group = plan[index * n:(index + 1) * n]
            if records.shard_complete(chains_dir, index):
                bar.update(sum(map(len, group)))
                continue
            if teacher is None:
                teacher = shards.load_teacher(cfg)
            entries = synthesize([[texts[t] for t in chain] for chain in group], teacher, budget,
                                 request, shard=index, bar=bar,
                                 names=[f"chain {index * n + j} (texts {chain})"
                                        for j, chain in enumerate(group)])
            shards.write_text_shard(chains_dir, index, [
                {"index": index * n + j, "texts": chain,
                 "entries": [{k: v for k, v in e.items() if k != "prompt"} for e in es]}
                for j, (chain, es) in enumerate(zip(group, entries))])
            synthesized += sum(map(len, group))
            bar.set_postfix(text_s=f"{synthesized / (time.perf_counter() - start):.2f}")
    finally:
        bar.close()
    synth_s = time.perf_counter() - start
    log.info("instruct-pt: synthesized %d texts in %.1f s (%.2f texts/s)", synthesized, synth_s,
             synthesized / max(synth_s, 1e-9))
    chains = [c for i in range(num_chain_shards) for c in shards.read_text_shard(chains_dir, i)]
    summary = write_mixture(ic, chains, texts, general, tok, out, mixture, progress)
    summary.update(chains=len(chains), texts=len(texts), texts_synthesized=synthesized,
                   pairs=sum(len(e["pairs"]) for c in chains for e in c["entries"]))
    return summary


def write_mixture(ic: Any, chains: list[dict], texts: list[str], general: list[str],
                  tok: TextTokenizer, out: str, mixture: Mapping[str, float],
                  progress: bool) -> dict[str, Any]:
    """Templify, mix and write text/ and tokens/ (finished shards are skipped)."""
    from tqdm import tqdm

    bos = [tok.bos_id] if ic.add_bos and tok.bos_id is not None else []
    eos = [tok.eos_id] if ic.add_eos and tok.eos_id is not None else []
    pools = {}
    for name, docs in (("augmented", fmt.templify(chains, ic.seed, tuple(ic.families))),
                       ("raw", texts), ("general", general)):
        if mixture[name] > 0:
            pools[name] = [(d, bos + ids + eos) for d, ids in zip(docs, tok.encode_batch(docs))]
    docs = mix(pools, mixture, ic.seed)
    n = ic.records_per_shard
    num_shards = math.ceil(len(docs) / n)
    text_dir, tok_dir = os.path.join(out, "text"), os.path.join(out, "tokens")
    for index in tqdm(range(num_shards), desc="instruct-pt shards", disable=not progress):
        if shards.shard_done(out, index):
            continue
        chunk = docs[index * n:(index + 1) * n]
        shards.write_text_shard(text_dir, index, [{"source": s, "text": t} for s, t, _ in chunk])
        writer = records.ShardWriter(tok_dir, index)
        for _, _, ids in chunk:
            writer.write(ids)
        writer.close()
    tokens = {k: sum(len(ids) for s, _, ids in docs if s == k) for k in pools}
    complete = shards.finish(out, num_shards, text_kind="instruct_pt_text", token_kind="document",
                             tok=tok, add_bos=ic.add_bos, add_eos=ic.add_eos, extra={
                                 "method": "instruct_pt", "mixture_weights": dict(mixture),
                                 "mixture_tokens": tokens, "sources": _describe_sources(ic)})
    return {"output_dir": out, "text": text_dir, "tokens": tok_dir, "documents": len(docs),
            "mixture_tokens": tokens, "shards_total": num_shards, "complete": complete}


def _describe_sources(ic: Any) -> list[str]:
    files = _list(ic.general_inputs) + ([] if ic.format == "tfds" else _list(ic.inputs))
    return [os.path.abspath(p) for p in sources.expand_inputs(files)] if files else []
