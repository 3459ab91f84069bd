"""Instruction Pre-Training as Cheng et al. define it: templify follows what the synthesizer wrote,
chaining ends at pairless texts, EOS/BOS separators (ids locally, strings over HTTP), mixing
without loss, and on_error with per-round persistence. The synthesizer is a fake OpenAI server on
127.0.0.1 (tests/fake_openai.py) driven by the real OpenAI client."""

import json
import os
import random
import re

import pytest

from conftest import MISTRAL_SP
from fake_openai import FakeServer
from lepjax.augment import instruct_data, instruct_format as fmt, instruct_pt, instruct_synth, shards
from lepjax.augment import instruct_templates as T
from lepjax.augment.config import default_config
from lepjax.augment.local_teacher import encode_prompt
from lepjax.augment.teacher_api import Request
from lepjax.data import records
from lepjax.data.loader import Loader
from lepjax.tokenizer import load_tokenizer

OPTIONS_Q = "Which river flows through Moscow?\nOptions:\n- the Volga\n- the Moskva\n- the Don"
COT_A = ("Let's think step by step. The text says the city was founded on the bank of the "
         "Moskva in 1147.\nTherefore, the answer is 1147.")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MISTRAL_SP)


def render(pairs, seed):
    used = set()
    doc = fmt.render_text("Moscow is the capital of Russia.", pairs, random.Random(seed), used)
    return doc, used


def test_options_pair_renders_its_options_with_the_label_as_answer():
    for seed in range(60):
        doc, used = render([[OPTIONS_Q, "the Moskva"]], seed)
        assert "Options:\n- " not in doc  # the synthesizer's block is relabelled, not pasted
        for option in ("the Volga", "the Moskva", "the Don"):
            assert doc.count(option) == 1, doc  # each option once; the answer is its label
        (name,) = [u.split(".", 1)[1] for u in used if u.startswith("labels.")]
        _, labels, line, answer = next(x for x in T.LABELS if x[0] == name)
        assert line.format(l=labels[1], o="the Moskva") in doc
        after = doc[doc.index("the Don") + len("the Don"):]
        assert answer.format(l=labels[1]) in after, doc


def test_cot_pair_renders_reasoning_before_the_answer_is():
    reasoning = "The text says the city was founded on the bank of the Moskva in 1147."
    for seed in range(60):
        doc, used = render([["When was Moscow founded?", COT_A]], seed)
        low = doc.lower()
        assert low.index(reasoning.lower()) < low.rindex("the answer is 1147"), doc
        assert all(u.startswith(("cot.", "text_first", "questions_first")) for u in used)
    both, used = render([[OPTIONS_Q, "Let's think step by step. It is on the river.\n"
                                     "Therefore, the answer is the Moskva."]], 3)
    assert any(u.startswith("options_cot.") for u in used)
    assert both.index("It is on the river.") < both.lower().rindex("the answer is")


def test_a_plain_pair_never_gets_options_or_reasoning():
    pairs = [["What is the capital of Russia?", "Moscow."], ["Is it big?", "Yes, very."]]
    for seed in range(200):
        doc, used = render(pairs, seed)
        low = doc.lower()
        for word in ("option", "choice", "choose", "pick", "select", "answer is", "reason",
                     "step by step", "think", "(a)", "a. moscow"):
            assert word not in low, (seed, word, doc)
        assert all(u.startswith(("qa.", "text_first", "questions_first")) for u in used)
        assert "Moscow." in doc and "Yes, very." in doc


def chains_of_every_kind(n=40):
    kinds = [["Where is it?", "On the river."], [OPTIONS_Q, "the Volga"],
             ["When was Moscow founded?", COT_A],
             [OPTIONS_Q, "Let's think step by step. It flows there.\nTherefore, the answer is "
                         "the Moskva."]]
    rng = random.Random(0)
    return [{"index": c, "entries": [
        {"text": f"Text {c}.{r}.", "pairs": rng.sample(kinds, rng.randint(1, 4)),
         "linked": r > 0} for r in range(3)]} for c in range(n)]


def test_templates_are_seeded_and_at_least_60_patterns_are_reachable():
    chains = chains_of_every_kind()
    assert fmt.templify(chains, seed=0) == fmt.templify(chains, seed=0)
    other = fmt.templify(chains, seed=1)
    assert sum(a != b for a, b in zip(fmt.templify(chains, seed=0), other)) >= 30
    used = set()
    for seed in range(30):
        fmt.templify(chains, seed, used)
    assert len(T.inventory()) >= 60 and len(used) >= 60, len(used)
    kinds = {u.split(".")[0] for u in used}
    assert {"qa", "options", "cot", "options_cot", "text_first", "questions_first"} <= kinds
    assert {u.split(".")[1] for u in used if u.split(".")[0] in T.KINDS} == set(T.STYLES)


def test_local_teacher_gets_eos_and_bos_ids_between_examples(tok):
    context = [fmt.synth_prompt("Москва — столица России."),
               fmt.format_pairs([("Что такое Москва?", "Столица России.")])]
    parts = fmt.chain_prompt(context, "Кремль стоит на реке.")
    ids = encode_prompt(tok, parts, add_bos=True)
    k = ids.index(tok.eos_id)
    assert ids[0] == tok.bos_id and ids[k + 1] == tok.bos_id
    assert ids.count(tok.eos_id) == 1 and ids.count(tok.bos_id) == 2
    assert tok.decode(ids[1:k]).endswith("</END>")
    assert tok.decode(ids[k + 2:]).startswith(" <CON> Кремль")
    pieces = [tok.pieces[i] for i in ids if i not in (tok.bos_id, tok.eos_id)]
    assert not [p for p in pieces if "</s" in p or "<s>" in p or p in ("s", "><")]
    assert instruct_synth.Budget(tok, 4096, 16).count(parts) == len(ids)  # the exact budget
    text = encode_prompt(tok, fmt.chain_prompt(context, "Кремль.", "text", "\n\n"))
    assert tok.eos_id not in text and text.count(tok.bos_id) == 1


def test_a_text_too_long_alone_is_cut_by_tokens_to_fit(tok):
    budget = instruct_synth.Budget(tok, 200, 16)
    short, cut = budget.fit_text("Москва — столица России.")
    assert short == "Москва — столица России." and not cut
    huge = " ".join(["Очень длинный текст о городе."] * 60)
    text, cut = budget.fit_text(huge)
    n = budget.count([fmt.synth_prompt(text)])
    assert cut and huge.startswith(text) and 200 - 16 - 8 <= n <= 200 - 16


TEXTS = [f"Text {i}: Москва стоит на реке, заметка номер {i}." for i in range(12)]


def synth_reply(no_pairs=(), fail=()):
    def reply(prompt):
        text = re.findall(r"<CON> (.*?) </CON>", prompt, re.S)[-1]
        i = int(re.match(r"Text (\d+):", text).group(1))
        if i in fail:
            return 400
        if i in no_pairs:
            return "I have nothing to ask about this."
        return (f"<QUE> What is note {i} about? <ANS> About a river, note {i}. </END>\n\n"
                f"<QUE> Which number has this note? <ANS> Number {i}. </END>\n\n<QUE> Trunc")
    return reply


def synth_config(tmp_path, url, **synth):
    path = tmp_path / "domain.txt"
    path.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    cfg = default_config()
    cfg.progress = False
    cfg.engine.kind = "synchronous"
    cfg.teacher.update(dict(backend="openai", urls=(url,), model="synth", max_retries=0,
                            max_in_flight=2, backoff_s=0.01, timeout_s=10.0))
    cfg.synth.update(dict(inputs=(str(path),), text_mode="line", tokenizer=MISTRAL_SP,
                          synthesizer_tokenizer=MISTRAL_SP, rounds=3, max_new_tokens=32,
                          context_tokens=512, chains_per_shard=2, records_per_shard=4,
                          output_dir=str(tmp_path / "out"), **synth))
    return cfg


def documents(out, source="augmented"):
    d = os.path.join(out, source, "text")
    n = len(records.open_dataset(os.path.join(out, source, "tokens")).shard_paths)
    return [r["text"] for i in range(n) for r in shards.read_text_shard(d, i)]


def prompt_of(prompts, i):
    (p,) = [p for p in prompts if re.findall(r"<CON> (.*?) </CON>", p, re.S)[-1]
            .startswith(f"Text {i}:")]
    return p


def test_pairless_text_ends_the_chain_and_is_never_context(tmp_path):
    with FakeServer(synth_reply(no_pairs={5})) as server:
        summary = instruct_pt.synthesize(synth_config(tmp_path, server.url))
    assert instruct_synth.plan_chains(12, 3)[1] == [1, 5, 9]
    assert summary["texts_without_pairs"] == 1 and not summary["failed_prompts"]
    # The OpenAI client sends the synthesizer's EOS and BOS strings between examples.
    assert "Number 1. </END></s><s> <CON> Text 5:" in prompt_of(server.prompts, 5)
    assert prompt_of(server.prompts, 9).startswith(" <CON> Text 9:")  # the chain ended at 5
    assert not [p for p in server.prompts if "Text 5:" in p and not p.endswith(
        TEXTS[5] + " </CON>\n\n")]  # text 5 is context of no prompt
    docs = documents(summary["output_dir"])
    assert not [d for d in docs if "Text 5:" in d]
    (one,) = [d for d in docs if "Text 1:" in d]
    (nine,) = [d for d in docs if "Text 9:" in d]
    assert one != nine and "Text 9:" not in one
    assert any("Text 4:" in d and "Text 8:" in d for d in docs)  # chains do link
    assert set(summary["datasets"]) == {"augmented"} and summary["data"]["weights"] == [1.0]


def test_on_error_skip_records_the_failed_prompt_and_a_rerun_retries_only_it(tmp_path):
    with FakeServer(synth_reply(fail={6})) as server:
        with pytest.raises(shards.AugmentError, match=r"text 6\)"):
            instruct_pt.synthesize(synth_config(tmp_path, server.url, on_error="fail"))
        assert len(server.prompts) == 10  # shard 0 (6), shard 1 rounds 0 and 1 (4)
        summary = instruct_pt.synthesize(synth_config(tmp_path, server.url, on_error="skip"))
        assert len(server.prompts) == 13  # persisted rounds not resent: the retry + round 2
        assert summary["prompts_sent"] == 3
        failed = prompt_of(server.prompts[:10], 6)
        assert server.prompts[10] == failed  # the same prompt retried
    assert [f["name"] for f in summary["failed_prompts"]] == ["chain 2, round 1 (text 6)"]
    with open(tmp_path / "out" / "chains" / "shard-00001" / "report.json") as f:
        assert "text 6" in json.load(f)["failed"][0]["name"]
    docs = "\n".join(documents(summary["output_dir"]))
    assert [i for i in range(12) if f"Text {i}:" not in docs] == [6]
    with FakeServer(synth_reply()) as healthy:
        again = instruct_pt.synthesize(synth_config(tmp_path, healthy.url, on_error="skip"))
    assert healthy.prompts == [failed] and not again["failed_prompts"]
    assert all(f"Text {i}:" in "\n".join(documents(again["output_dir"])) for i in range(12))


def test_augment_fraction_keeps_the_rest_raw_only(tmp_path):
    with FakeServer(synth_reply()) as server:
        summary = instruct_pt.synthesize(synth_config(
            tmp_path, server.url, augment_fraction=0.5, weights=dict(augmented=1.0, raw=1.0,
                                                                     general=0.0)))
    raw = documents(summary["output_dir"], "raw")
    augmented = "\n".join(documents(summary["output_dir"]))
    assert len(raw) == 6 and summary["texts_augmented"] == 6
    assert sorted(raw + [t for t in TEXTS if t in augmented]) == sorted(TEXTS)
    assert not [t for t in raw if t in augmented]
    assert len(server.prompts) == 6
    assert summary["data"]["paths"] == [summary["datasets"]["augmented"],
                                        summary["datasets"]["raw"]]
    tok = load_tokenizer(MISTRAL_SP)
    for source in ("augmented", "raw"):  # token records are the text records, BOS and EOS added
        ds = records.open_dataset(summary["datasets"][source], fingerprint=tok.fingerprint())
        assert ds.kind == "document" and ds.num_tokens == summary["tokens"][source]
        from array_record.python.array_record_module import ArrayRecordReader

        got = []
        for path in ds.shard_paths:
            reader = ArrayRecordReader(path)
            got += [records.decode(b)["tokens"].tolist()
                    for b in reader.read(list(range(reader.num_records())))]
        assert got == tok.encode(documents(summary["output_dir"], source), add_bos=True,
                                 add_eos=True)


def test_a_1_to_1_mix_keeps_every_augmented_token_and_repeats_the_smaller(tmp_path, tok):
    sc = default_config().synth
    augmented = [f"Документ {i}: " + "Москва стоит на реке. " * (1 + i % 5) for i in range(40)]
    general = [f"Question {i}? Answer {i}." for i in range(10)]
    def dataset(name, docs):  # shards of 7 documents, as the engine tasks write them
        for i in range(0, len(docs), 7):
            instruct_data.write_doc_shard(str(tmp_path / name), i // 7, docs[i:i + 7], name, tok,
                                          sc)
        return instruct_data.finish_dataset(str(tmp_path / name), -(-len(docs) // 7), name, tok,
                                            sc)

    a, g = dataset("augmented", augmented), dataset("general", general)
    source = {tuple(ids): "augmented" for ids in tok.encode(augmented, add_bos=True,
                                                             add_eos=True)}
    source.update({tuple(ids): "general" for ids in tok.encode(general, add_bos=True,
                                                               add_eos=True)})
    loader = Loader([a["path"], g["path"]], seq_len=256, batch_size=1, weights=[1, 1],
                    num_epochs=1, packing_bins=4, process_index=0, process_count=1)
    seen = {"augmented": 0, "general": 0}
    for batch in loader:
        tokens, seg = batch["tokens"][0], batch["segment_ids"][0]
        for s in set(seg.tolist()) - {0}:
            seen[source[tuple(tokens[seg == s].tolist())]] += int((seg == s).sum())
    assert seen["augmented"] == a["tokens"]  # every augmented token, exactly once
    assert seen["general"] > 3 * g["tokens"]  # the smaller source is repeated
    assert abs(seen["general"] - seen["augmented"]) <= 0.1 * seen["augmented"]
    epochs = loader.epochs()
    want = instruct_data.epochs_per_source({"augmented": a["tokens"], "general": g["tokens"]},
                                           {"augmented": 1, "general": 1})
    assert epochs[0] == pytest.approx(1.0) and want["augmented"] == 1.0
    assert epochs[1] == pytest.approx(want["general"], rel=0.1)


def test_openai_teacher_renders_special_parts_as_configured_strings():
    from lepjax.augment.teacher import make_teacher
    from lepjax.augment.teacher_api import BOS, EOS

    cfg = default_config()
    cfg.teacher.update(dict(backend="openai", urls=("http://127.0.0.1:1/v1",), tokenizer=MISTRAL_SP))
    parts = ["<QUE> q <ANS> a </END>", EOS, BOS, " <CON> t </CON>\n\n"]
    assert make_teacher(cfg).body(parts, Request())["prompt"] == \
        "<QUE> q <ANS> a </END></s><s> <CON> t </CON>\n\n"
    cfg.teacher.special_text.update(dict(eos="<|end|>", bos="<|begin|>"))
    assert "</END><|end|><|begin|> <CON>" in make_teacher(cfg).body(parts, Request())["prompt"]
    cfg.teacher.update(dict(tokenizer="", special_text=dict(bos="", eos="")))
    with pytest.raises(ValueError, match="teacher.special_text.eos"):
        make_teacher(cfg).body(parts, Request())


def test_enumerated_keys_are_checked_before_anything_is_read():
    from lepjax.augment.config import validate_config
    from lepjax.config import ConfigError

    cfg = default_config()
    validate_config(cfg)
    cfg.synth.separator = "eos"
    with pytest.raises(ConfigError, match="synth.separator.*did you mean 'eos_bos'"):
        validate_config(cfg)
    cfg = default_config()
    cfg.fiat.on_long = "cut"
    with pytest.raises(ConfigError, match="fiat.on_long"):
        validate_config(cfg)
