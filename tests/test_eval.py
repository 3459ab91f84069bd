"""Evaluation: continuation log-likelihoods against transformers, bits per byte on files and shards,
multiple-choice scoring (acc / acc_norm), hand-computed text metrics, task-file errors, and the
`lepjax eval` report over two checkpoints."""

import json
import os
import shutil

import mistral_common
import numpy as np
import pytest
import torch
from conftest import make_hf_model

from lepjax import models
from lepjax.eval import metrics as M
from lepjax.eval.loglik import Scorer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
BOS, EOS = 256, 257


def fixture_lines(name: str, n: int, start: int = 0) -> list[str]:
    with open(os.path.join(HERE, "fixtures", name), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f][start:start + n]


def write_byte_tokenizer(directory: str) -> str:
    """A byte-level tokenizer.json without merges: a token per UTF-8 byte, <s>=256, </s>=257."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's byte -> char map
    others = [b for b in range(256) if b not in printable]
    chars = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(tok_models.BPE(vocab={c: b for b, c in chars.items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    return path


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def write_bpe_tokenizer(directory: str, lines: list[str], vocab_size: int = 480) -> str:
    """A small byte-level BPE tokenizer.json trained on `lines` (<s> = 0, </s> = 1)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """(transformers model, the same weights loaded by lepjax, its byte tokenizer)."""
    from lepjax.tokenizer import load_tokenizer

    hf = make_hf_model("llama3_1", vocab_size=258)
    path = str(tmp_path_factory.mktemp("eval") / "byte_llama")
    hf.save_pretrained(path)
    write_byte_tokenizer(path)
    model, _ = models.load(path, dtype="float32")
    tok = load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id) == (BOS, EOS)
    assert tok.encode(["Ab ж"]) == [list("Ab ж".encode())]
    return hf, model, tok


def torch_loglik(hf, ids, start) -> tuple[float, bool]:
    """Reference: summed log p(ids[start:]) in float64 from transformers' logits, and greedy."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[start:])
    picked = logp[start - 1:len(ids) - 1].gather(1, targets[:, None])[:, 0]
    greedy = bool((logits[start - 1:len(ids) - 1].argmax(-1) == targets).all())
    return float(picked.sum()), greedy


def test_loglik_matches_transformers_for_any_batch_size_and_padding(byte_model):
    hf, model, _ = byte_model
    rng = np.random.default_rng(0)
    seqs, starts = [], []
    for n, s in [(5, 2), (17, 9), (9, 8), (30, 1), (12, 4)]:
        seqs.append([BOS] + rng.integers(0, 256, n - 1).tolist())
        starts.append(s)
    greedy = [BOS] + rng.integers(0, 256, 6).tolist()
    for _ in range(3):  # the model's own greedy continuation: the greedy flag must be set
        with torch.no_grad():
            greedy.append(int(hf(torch.tensor([greedy])).logits[0, -1].argmax()))
    seqs.append(greedy)
    starts.append(7)
    ref = [torch_loglik(hf, s, st) for s, st in zip(seqs, starts)]
    assert ref[-1][1] and not all(g for _, g in ref)
    for batch_size, padding in [(1, "right"), (2, "left"), (3, "left"), (8, "right")]:
        got = Scorer(model, batch_size=batch_size, length_bucket=16, padding=padding).score(
            seqs, starts)
        for (lp, g), (ref_lp, ref_g) in zip(got, ref):
            assert abs(lp - ref_lp) <= 1e-4, (batch_size, padding, lp, ref_lp)
            assert g == ref_g


def test_scorer_excludes_rows_past_vocab_limit(byte_model):
    """Rows >= vocab_limit (embedding padding) take no probability when scoring."""
    hf, model, _ = byte_model
    rng = np.random.default_rng(2)
    seqs = [[BOS] + rng.integers(0, 200, n).tolist() for n in (6, 13)]
    got = Scorer(model, batch_size=2, length_bucket=16, vocab_limit=200).score(seqs, [1, 3])
    for (lp, _), ids, start in zip(got, seqs, [1, 3]):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].double()[:, :200]
        logp = torch.log_softmax(logits, -1)[start - 1:len(ids) - 1]
        ref = float(logp.gather(1, torch.tensor(ids[start:])[:, None]).sum())
        assert abs(lp - ref) <= 1e-4


def test_loglik_sliding_window_with_left_padding_matches_transformers(tmp_path):
    hf = make_hf_model("mistral")  # sliding window 5, shorter than the sequences
    hf.save_pretrained(tmp_path / "mistral")
    model, _ = models.load(str(tmp_path / "mistral"), dtype="float32")
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 256, n).tolist() for n in (4, 19, 11)]
    starts = [1, 6, 10]
    ref = [torch_loglik(hf, s, st)[0] for s, st in zip(seqs, starts)]
    for batch_size, padding in [(2, "left"), (4, "right")]:
        got = Scorer(model, batch_size=batch_size, length_bucket=32, padding=padding).score(
            seqs, starts)
        assert np.allclose([g[0] for g in got], ref, atol=1e-4), (padding, got, ref)


def test_bits_per_byte_same_from_file_and_shards(tmp_path):
    from lepjax.data.prepare import default_config, prepare
    from lepjax.tokenizer import load_tokenizer
    from lepjax.eval.bpb import heldout_bits_per_byte

    lines = fixture_lines("ru_gsd_dev.txt", 9) + fixture_lines("en_ewt_dev.txt", 4)
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(lines[:7]) + "\n\n" + "\n".join(lines[7:]) + "\n", encoding="utf-8")
    write_byte_tokenizer(str(tmp_path / "bytes"))
    shard_dirs = {}
    for name, tokenizer in (("same", MISTRAL_SP), ("other", str(tmp_path / "bytes"))):
        cfg = default_config()
        cfg.update(dict(tokenizer=tokenizer, inputs=(str(text),), output_dir=str(tmp_path / name),
                        records_per_shard=5, engine=dict(kind="synchronous")))
        prepare(cfg, progress=False)
        shard_dirs[name] = str(tmp_path / name)
    tok = load_tokenizer(MISTRAL_SP)
    model = models.create_model(models.get_preset("tiny_llama3", vocab_size=32000), seed=3,
                                dtype="float32")
    scorer = Scorer(model, batch_size=4, length_bucket=64)
    from_file = heldout_bits_per_byte(model, tok, str(text), scorer=scorer)
    assert from_file["bytes"] == sum(len(t.encode()) for t in lines)
    assert from_file["chars"] == sum(len(t) for t in lines)
    assert from_file["documents"] == len(lines)
    assert 0 < from_file["bits_per_byte"] < from_file["bits_per_char"]
    for name, path in shard_dirs.items():  # same tokenizer, and re-encoded from another one
        got = heldout_bits_per_byte(model, tok, path, scorer=scorer)
        for key in ("bytes", "chars", "tokens", "documents"):
            assert got[key] == from_file[key], (name, key)
        assert got["bits_per_byte"] == pytest.approx(from_file["bits_per_byte"], rel=1e-6), name
        assert got["bits_per_char"] == pytest.approx(from_file["bits_per_char"], rel=1e-6), name


MC_TASK = """
from ml_collections import ConfigDict

def get_config():
    return ConfigDict(dict(name="rigged", kind="multiple_choice", answer_field="label",
                           choices_field="choices", metrics=("acc", "acc_norm"),
                           templates=dict(en=dict(prompt="Q: {question}\\nA:"))))
"""


def test_multiple_choice_rigged_and_length_normalised(byte_model, tmp_path):
    from lepjax.eval.task_eval import evaluate_task
    from lepjax.eval.tasks import load_task, read_examples

    hf, model, tok = byte_model
    enc = lambda s: list(s.encode())  # noqa: E731  (the byte tokenizer: one token per byte)
    ll = lambda q, c: torch_loglik(hf, [BOS] + enc(f"Q: {q}\nA:") + enc(" " + c),  # noqa: E731
                                   1 + len(enc(f"Q: {q}\nA:")))[0]
    questions = ["what is red", "who came", "where now", "why not", "how many", "which one",
                 "is it", "can we", "when then", "what if"]
    pool = ["yes", "no", "maybe", "cat", "the dog ran", "blue sky", "seven", "ok"]
    rigged = []
    for i, q in enumerate(questions[:5]):  # gold = the choice the reference model prefers
        choices = [pool[(i + k) % len(pool)] for k in range(4)]
        lls = [ll(q, c) for c in choices]
        rigged.append({"question": q, "choices": choices, "label": int(np.argmax(lls))})
    assert len({r["label"] for r in rigged}) > 1  # not always the same position
    changed, kept = [], []
    for q in questions:  # raw sum prefers the short answer; per character, the long one (or not)
        for short, long in [("no", "absolutely right"), ("hm", "zzzzzzzzzz"),
                            ("no", "ЖЖЖЖЖЖ"), ("yes", "Жук Жужа")]:
            a, b = ll(q, short), ll(q, long)
            if a - b < 1e-2:
                continue
            per_char = b / len(long) - a / len(short)  # characters, as lm-eval-harness
            if per_char > 1e-3 and len(changed) < 3:
                changed.append({"question": q, "choices": [short, long], "label": 1})
            elif per_char < -1e-3 and len(kept) < 2:
                kept.append({"question": q, "choices": [short, long], "label": 0})
    assert len(changed) >= 2 and kept, "no example where normalisation flips the choice"
    cfg_path = tmp_path / "rigged.py"
    cfg_path.write_text(MC_TASK)
    task = load_task(str(cfg_path), "en")
    scorer = Scorer(model, batch_size=4, length_bucket=32)
    for rows, acc, acc_norm in [(rigged, 1.0, None), (changed, 0.0, 1.0), (kept, 1.0, 1.0)]:
        data = tmp_path / "mc.jsonl"
        write_jsonl(data, rows)
        examples = read_examples(task, str(data))
        scores, preds = evaluate_task(task, examples, [], False, scorer=scorer, generator=None,
                                      tokenizer=tok, max_len=256, progress=False)
        assert scores["acc"] == acc and scores["examples"] == len(rows)
        if acc_norm is not None:
            assert scores["acc_norm"] == acc_norm
        for p, r in zip(preds, rows):
            ref = [ll(r["question"], c) for c in r["choices"]]
            assert np.allclose(p["logliks"], ref, atol=1e-4)
            if rows is changed:  # the raw sum picks the short answer, normalisation the long one
                assert (p["pred"], p["pred_norm"]) == (0, 1)
            if rows is kept:
                assert (p["pred"], p["pred_norm"]) == (0, 0)


def test_metrics_on_hand_computed_examples():
    assert M.exact_match("The Cat!", "cat") == 1.0
    assert M.exact_match("a cat", ["dog", "the cat"]) == 1.0
    assert M.exact_match("cats", "cat") == 0.0
    assert M.exact_match("«Москва».", "москва", "ru") == 1.0
    assert M.exact_match("U.S.", "US") == 1.0  # punctuation is deleted, not a word break
    assert M.token_f1("don't stop", "dont") == pytest.approx(2 / 3)
    # Devanagari vowel signs are combining marks: they belong to their word.
    assert M.rouge_l("कि", "का", "hi") == 0.0
    assert M.rouge_l("हिन्दी किताब", "नई किताब", "hi") == pytest.approx(0.5)
    # pred {quick, brown, fox} vs gold {quick, fox, jumps}: 2 common, P = R = 2/3
    assert M.token_f1("the quick brown fox", "quick fox jumps") == pytest.approx(2 / 3)
    assert M.token_f1("Привет, мир", ["мир", "пока"], "ru") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert M.token_f1("東京都", "東京", "ja") == pytest.approx(0.8)  # characters: P 2/3, R 1
    assert M.token_f1("nothing here", "cat") == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens each side
    assert M.rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert M.rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # LCS 1: P = R = 1/4
    assert M.rouge_l("Кошка сидела на ковре", "кошка на ковре", "ru") == pytest.approx(
        2 * (3 / 4) * 1 / (3 / 4 + 1))
    # chrF (6-gram, beta 2, effective order): "ab" vs "abc": P1 = 1, R1 = 2/3, P2 = 1, R2 = 1/2;
    # mean P = 1, mean R = 7/12, F = 5 * 7/12 / (4 + 7/12) = 7/11
    assert M.chrf("ab", "abc") == pytest.approx(700 / 11)
    assert M.chrf("abc", "abc") == pytest.approx(100.0)
    assert M.chrf("xyz", "abc") == 0.0
    # corpus statistics summed: orders 1..3 count (n=3: 1 hyp, 2 ref, 0 match);
    # mean P = (2/5 + 1/3 + 0)/3 = 11/45, mean R = (1/3 + 1/4 + 0)/3 = 7/36
    p, r = 11 / 45, 7 / 36
    expected = 100 * 5 * p * r / (4 * p + r)
    assert M.corpus_chrf(["ab", "xyz"], ["abc", "abc"]) == pytest.approx(expected)


def test_task_file_errors_name_file_and_line(tmp_path):
    from lepjax.eval.tasks import TaskError, format_prompt, load_task, read_examples

    xnli = os.path.join(REPO, "configs", "eval", "xnli.py")
    task = load_task(xnli, "ru")
    data = tmp_path / "xnli_ru.jsonl"
    good = {"premise": "Кошка спит.", "hypothesis": "Животное отдыхает.", "label": 0}
    rows = [good, {"premise": "Дождь идёт.", "label": "neutral"}, good]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    with pytest.raises(TaskError, match=rf"{data}:2: missing field 'hypothesis'"):
        read_examples(task, str(data))
    data.write_text(json.dumps(good, ensure_ascii=False) + "\n\n{not json\n")
    with pytest.raises(TaskError, match=rf"{data}:3: invalid JSON"):
        read_examples(task, str(data))
    data.write_text(json.dumps({**good, "label": "maybe"}, ensure_ascii=False) + "\n")
    with pytest.raises(TaskError, match=rf"{data}:1: answer 'maybe' is not one of"):
        read_examples(task, str(data))
    with pytest.raises(TaskError, match=r"xnli.py: no template for language 'xx'"):
        load_task(xnli, "xx")
    # Every shipped template loads and fills for English, Russian and the paper's languages.
    dummy = {"premise": "p", "hypothesis": "h", "label": 1, "text": "t", "summary": "s",
             "context": "c", "question": "q", "answers": ["a"], "source": "s", "target": "t"}
    from lepjax.eval.tasks import Example

    for name in ("xnli", "xlsum", "span_qa", "translation"):
        for lang in ("en", "ru", "ar", "de", "el", "hi", "ja", "sw", "th"):
            if name == "translation" and lang == "en":
                continue
            task = load_task(os.path.join(REPO, "configs", "eval", f"{name}.py"), lang)
            prompt = format_prompt(task, Example(dummy, "x", 1))
            assert "{" not in prompt and len(prompt) > 5
            assert task.kind == "multiple_choice" or task.stop == ("\n",)


def test_eval_cli_reports_two_checkpoints(tmp_path):
    import matplotlib.image

    from lepjax.cli.main import main
    from lepjax.data.prepare import default_config, prepare

    # Two checkpoints, each with its own tokenizer: an HF directory (a BPE trained on Russian)
    # and a lepjax directory (one token per byte).
    a = models.create_model(models.get_preset("tiny_llama3"), seed=1, dtype="float32")
    path_a = models.save_hf(a, str(tmp_path / "source"))
    write_bpe_tokenizer(path_a, fixture_lines("ru_gsd_dev.txt", 300))
    b = models.create_model(models.get_preset("tiny_mistral", vocab_size=258), seed=2,
                            dtype="float32")
    path_b = models.save(b, str(tmp_path / "adapted"))
    write_byte_tokenizer(path_b)

    ru = fixture_lines("ru_gsd_test.txt", 6)
    heldout = tmp_path / "ru.txt"
    heldout.write_text("\n".join(ru) + "\n", encoding="utf-8")
    english = tmp_path / "en.txt"
    english.write_text("\n".join(fixture_lines("en_ewt_test.txt", 6)) + "\n", encoding="utf-8")
    cfg = default_config()
    cfg.update(dict(tokenizer=path_a, inputs=(str(heldout),), output_dir=str(tmp_path / "shards"),
                    records_per_shard=4, engine=dict(kind="synchronous")))
    prepare(cfg, progress=False)
    xnli, xlsum, qa = tmp_path / "xnli.jsonl", tmp_path / "xlsum.jsonl", tmp_path / "qa.jsonl"
    write_jsonl(xnli, [{"premise": p, "hypothesis": h, "label": y} for p, h, y in [
        ("Кошка спит на диване.", "Животное отдыхает.", "entailment"),
        ("Мальчик читает книгу.", "Мальчик спит.", "contradiction"),
        ("Идёт дождь.", "Сегодня вторник.", "neutral")]])
    write_jsonl(xlsum, [{"text": ru[0], "summary": "Билли играл за резерв."},
                        {"text": ru[1], "summary": "Проезд стоит 15 рублей."}])
    write_jsonl(qa, [{"context": c, "question": q, "answers": {"text": [a]}} for c, q, a in [
        ("Москва — столица России.", "Столица России?", "Москва"),
        ("Волга впадает в Каспийское море.", "Куда впадает Волга?", "в Каспийское море"),
        ("Пушкин родился в 1799 году.", "Когда родился Пушкин?", "в 1799 году"),
        ("Байкал — самое глубокое озеро.", "Какое озеро самое глубокое?", "Байкал")]])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Привет, как дела?\nРасскажи о Москве.\n", encoding="utf-8")
    out = tmp_path / "report"
    rc = main(["eval", f"--config={os.path.join(REPO, 'configs', 'eval', 'example.py')}",
               f"--config.checkpoints=source={path_a},adapted={path_b}",
               f"--config.output_dir={out}", "--config.dtype=float32",
               f"--config.heldout={heldout},{tmp_path / 'shards'}",
               f"--config.efficiency.english={english}",
               f"--config.tasks.xnli.data={xnli}", f"--config.tasks.xlsum.data={xlsum}",
               f"--config.tasks.span_qa.data={qa}", f"--config.speed.prompts={prompts}",
               "--config.tasks.xlsum.max_new_tokens=6", "--config.tasks.span_qa.max_new_tokens=6",
               "--config.speed.max_new_tokens=4", "--config.batch_size=4",
               "--config.length_bucket=128", "--config.max_len=384", "--config.progress=false"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    labels = {"source", "adapted"}
    assert set(res["checkpoints"]) == labels
    assert res["checkpoints"]["adapted"]["format"] == "lepjax"
    assert res["checkpoints"]["source"]["format"] == "hf"
    lm = res["language_modelling"]
    assert set(lm) == {"ru.txt", "shards"} and all(set(v) == labels for v in lm.values())
    for label in labels:  # file and shards agree for both tokenizers (one re-encodes the shards)
        assert lm["shards"][label]["bits_per_byte"] == pytest.approx(
            lm["ru.txt"][label]["bits_per_byte"], rel=1e-6)
    eff = res["efficiency"]["ru.txt"]
    assert set(eff) == labels and all(v["ratio_to_english"] > 0 for v in eff.values())
    assert eff["adapted"]["tokens"] == sum(len(t.encode()) for t in ru)  # one token per byte
    assert set(res["tasks"]) == {"xnli", "xlsum", "span_qa"}  # translation: no data, skipped
    assert set(res["tasks"]["xnli"]["results"]["source"]) >= {"acc", "acc_norm"}
    assert set(res["tasks"]["span_qa"]["results"]["adapted"]) >= {"exact_match", "f1"}
    assert set(res["tasks"]["xlsum"]["results"]["adapted"]) >= {"rouge_l", "chrf"}
    assert all(set(t["results"]) == labels for t in res["tasks"].values())
    speed = res["speed"]
    assert speed["baseline"] == "source" and set(speed["checkpoints"]) == labels
    assert "adapted / source" in speed["ratios"]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| source |" in md and "| adapted |" in md and "bits_per_byte" in md
    charts = sorted((out / "charts").glob("*.png"))
    assert {c.name for c in charts} >= {"language_modelling_bits_per_byte.png", "tasks_acc.png",
                                        "efficiency_tokens_per_word.png", "speed_speedup.png"}
    for c in charts:
        assert c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(str(c)).ndim == 3
    for task, n in (("xnli", 3), ("xlsum", 2), ("span_qa", 4)):
        for label in labels:
            rows = (out / "predictions" / task / f"{label}.jsonl").read_text().splitlines()
            assert len(rows) == n
    qa_rows = [json.loads(r) for r in
               (out / "predictions" / "span_qa" / "source.jsonl").read_text().splitlines()]
    assert all(r["prompt"].count("Вопрос:") == 4 for r in qa_rows)  # 3 shots + the question
    assert all(r["golds"] for r in qa_rows)
    speed_rows = (out / "predictions" / "speed.jsonl").read_text().splitlines()
    assert len(speed_rows) == 2 and "tokens_ratio" in json.loads(speed_rows[0])["adapted"]
    # An existing report is not overwritten silently.
    assert main(["eval", f"--config.checkpoints={path_a}", f"--config.output_dir={out}"]) == 1
