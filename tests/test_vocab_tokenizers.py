"""Tokenizer adapters and vocabulary extension on the real Mistral 7B v0.1 and Llama 3 tokenizers.

Tokenizer files come from the PyPI packages mistral-common and llama-models; the Russian/English
text is UD Russian-GSD / English-EWT (tests/fixtures/README.md).
"""

import os
import pathlib
import re

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
K = 1000
CYRILLIC = "[А-Яа-яЁё]"


def lines(name):
    return [s for s in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if s.strip()]


RU_TRAIN = str(FIXTURES / "ru_gsd_dev.txt")
RU_HELDOUT = lines("ru_gsd_test.txt")
EN = lines("en_ewt_dev.txt") + lines("en_ewt_test.txt")
EDGE = ["a  b", "  two leading", "trailing  ", "tab\tand\nnewline", "digits 1234567",
        "ёлка ЁЖ", "emoji 🙂 ok", "日本語のテキスト", "mixed Москва-City 2024"]


def mistral_path():
    import mistral_common

    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def llama3_path():
    import llama_models

    return os.path.join(os.path.dirname(llama_models.__file__), "llama3", "tokenizer.model")


@pytest.fixture(scope="module")
def mistral():
    from lepjax.vocab import load_vocab

    return load_vocab(mistral_path())


@pytest.fixture(scope="module")
def llama3():
    from lepjax.vocab import load_vocab

    return load_vocab(llama3_path())


@pytest.fixture(scope="module")
def extended(mistral, llama3):
    """k=1000 extensions of both tokenizers from the Russian text, merges after the originals."""
    from lepjax.vocab import extend

    out = {}
    for name, src in (("mistral", mistral), ("llama3", llama3)):
        out[name] = extend(src, [RU_TRAIN], K, priority="after", aux_vocab_size=8000,
                           progress=False)
    return out


def test_adapters_match_the_reference_implementations(mistral, llama3):
    import sentencepiece as spm
    from llama_models.llama3.tokenizer import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=mistral_path())
    ref = Tokenizer(pathlib.Path(llama3_path()))
    assert mistral.vocab_size == 32000 and llama3.vocab_size == 128256
    assert llama3.piece_to_id["<|eot_id|>"] == ref.special_tokens["<|eot_id|>"]
    texts = RU_HELDOUT[:300] + EN[:300] + EDGE
    for text in texts:
        assert mistral.encode(text) == sp.encode(text), text
        assert llama3.encode(text) == ref.encode(text, bos=False, eos=False), text
    ids, offsets = mistral.encode_with_offsets("Привет, мир")
    assert [mistral.pieces[i] for i in ids] == ["▁При", "вет", ",", "▁ми", "р"]
    assert offsets == [(0, 3), (3, 6), (6, 7), (7, 10), (10, 11)]
    ids, offsets = llama3.encode_with_offsets("Привет, мир")
    assert "".join("Привет, мир"[s:e] for s, e in offsets) == "Привет, мир"
    assert mistral.merges[0] == ("▁", "t") and len(llama3.merges) == 280147


@pytest.mark.parametrize("name", ["mistral", "llama3"])
def test_extension_k1000(name, extended, mistral, llama3):
    src = {"mistral": mistral, "llama3": llama3}[name]
    new, summary = extended[name]
    V = src.vocab_size
    assert new.vocab_size == V + K and summary["new_ids"] == [V, V + K]
    assert new.pieces[:V] == src.pieces
    new_ids = sorted(new.piece_to_id[p] for p in summary["new_tokens"])
    assert new_ids == list(range(V, V + K))
    for text in RU_HELDOUT + EN + EDGE:
        assert new.decode(new.encode(text)) == text
    # Priority `after`: English is encoded exactly as before.
    for text in EN:
        assert new.encode(text) == src.encode(text), text
    # Held-out Russian needs fewer tokens; new ids are actually used.
    chars = sum(len(t) for t in RU_HELDOUT)
    before = sum(len(src.encode(t)) for t in RU_HELDOUT)
    after_ids = [i for t in RU_HELDOUT for i in new.encode(t)]
    assert chars / len(after_ids) > 1.02 * chars / before
    assert len({i for i in after_ids if i >= V}) > 200


def test_written_files_agree_with_lepjax(extended, tmp_path):
    """tokenizer.json via `tokenizers`, the .model via sentencepiece, Llama 3 via tiktoken."""
    import sentencepiece as spm
    import tiktoken
    from tokenizers import Tokenizer

    from lepjax.tokenizer.convert import piece_to_bytes
    from lepjax.vocab import load_vocab, save_tokenizer

    texts = RU_HELDOUT + EN[:1500] + EDGE
    for name, (new, summary) in extended.items():
        d = save_tokenizer(new, str(tmp_path / name), summary)
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        enc = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        assert enc == [new.encode(t) for t in texts]
        assert load_vocab(d).pieces == new.pieces
        if name == "mistral":
            sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
            assert sp.get_piece_size() == 32000 + K
            assert sp.encode(texts) == enc
        else:
            ranks = {piece_to_bytes(p): i for i, p in enumerate(new.pieces)
                     if i not in new.special}
            tt = tiktoken.Encoding("ext", pat_str=new.pattern, mergeable_ranks=ranks,
                                   special_tokens={p: i for i, p in new.special.items()})
            assert [tt.encode_ordinary(t) for t in texts] == enc
    # transformers reads the directory with its special tokens.
    from transformers import AutoTokenizer

    at = AutoTokenizer.from_pretrained(str(tmp_path / "llama3"))
    assert at.bos_token == "<|begin_of_text|>" and len(at) == 128256 + K
    assert at("Привет")["input_ids"][0] == 128000


def test_priority_before_and_filter(mistral):
    import sentencepiece as spm

    from lepjax.vocab import extend
    from lepjax.vocab.tokenizer import extend_sentencepiece_proto

    new, summary = extend(mistral, [RU_TRAIN], 300, priority="before", aux_vocab_size=4000,
                          token_filter=CYRILLIC, progress=False)
    assert all(any("А" <= c <= "я" or c in "Ёё" for c in mistral.surface(p))
               for p in summary["new_tokens"])
    assert new.order[:300] == summary["new_tokens"]
    sp = spm.SentencePieceProcessor(model_proto=new.sp_proto.SerializeToString())
    for text in RU_HELDOUT[:200]:
        assert sp.encode(text) == new.encode(text)
        assert new.decode(new.encode(text)) == text
    scores = [p.score for p in extend_sentencepiece_proto(mistral.sp_proto, ["x1", "x2"],
                                                          "after").pieces[-2:]]
    assert scores[0] > scores[1] and scores[0] < -1e9  # below Mistral's lowest (-1e9) pieces


def test_replacement(mistral, llama3):
    from lepjax.vocab import replace

    for src, size in ((mistral, 3000), (llama3, 3000)):
        new, summary = replace(src, [RU_TRAIN], size, progress=False)
        assert new.vocab_size == size
        for i, p in src.special.items():
            j = i if src is mistral else size - (src.vocab_size - i)
            assert new.pieces[j] == p
        for text in RU_HELDOUT[:100] + EN[:50]:
            assert new.decode(new.encode(text)) == text
        learnt = [new.surface(p) for p in new.order if len(p) > 1]
        assert sum(bool(re.search(CYRILLIC, t)) for t in learnt) > 0.7 * len(learnt)


def test_bad_input(mistral, tmp_path):
    from lepjax.vocab import extend
    from lepjax.vocab.corpus import check_corpus

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt hold no non-blank line"):
        check_corpus([str(empty)])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        check_corpus([str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="k=5000 is larger than the auxiliary vocabulary"):
        extend(mistral, [RU_TRAIN], 5000, aux_vocab_size=1000, progress=False)
    with pytest.raises(ValueError, match=r"k=3000 is larger than the \d+ new tokens"):
        extend(mistral, [RU_TRAIN], 3000, aux_vocab_size=3000, progress=False)
    with pytest.raises(ValueError, match="priority"):
        extend(mistral, [RU_TRAIN], 10, priority="middle", progress=False)


def test_cli_extend_and_report(tmp_path, capsys):
    import json

    import lepjax.cli.main as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["vocab", "--help"])
    assert e.value.code == 0
    assert "init-embeddings" in capsys.readouterr().out
    tok = str(tmp_path / "tok")
    assert cli.main(["vocab", "extend", f"--config.tokenizer={mistral_path()}",
                     f"--config.corpus={RU_TRAIN}", f"--config.output_dir={tok}",
                     "--config.extend.k=200", "--config.extend.aux_vocab_size=2000",
                     "--no-progress"]) == 0
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
            "resolved_config.json"} <= set(os.listdir(tok))
    assert not os.path.exists(tok + ".partial")
    resolved = json.load(open(os.path.join(tok, "resolved_config.json")))
    assert resolved["extend"]["k"] == 200 and resolved["command"]["action"] == "extend"
    # An existing output is not replaced without overwrite.
    assert cli.main(["vocab", "extend", f"--config.tokenizer={mistral_path()}",
                     f"--config.corpus={RU_TRAIN}", f"--config.output_dir={tok}",
                     "--no-progress"]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert cli.main(["vocab", "extend", f"--config.tokenizer={mistral_path()}",
                     f"--config.corpus={empty}", f"--config.output_dir={tmp_path / 'x'}",
                     "--no-progress"]) == 1
    assert "corpus is empty" in capsys.readouterr().err
    rep = str(tmp_path / "report")
    assert cli.main(["vocab", "report", f"--config.report.tokenizers={mistral_path()},{tok}",
                     f"--config.report.heldout={FIXTURES / 'ru_gsd_test.txt'},"
                     f"{FIXTURES / 'en_ewt_test.txt'}", f"--config.output_dir={rep}",
                     "--no-progress"]) == 0
    data = json.load(open(os.path.join(rep, "report.json")))
    ru = data["results"]["ru_gsd_test.txt"]
    assert ru["after"]["chars_per_token"] > ru["before"]["chars_per_token"]
    assert ru["after"]["tokens_per_sentence_with_special"] == \
        ru["after"]["tokens_per_sentence"] + 1
    assert data["ratios"]["en_ewt_test.txt: after / before"]["tokens_per_word"] == 1.0
    assert open(os.path.join(rep, "report.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
