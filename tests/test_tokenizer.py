"""The runtime tokenizer (`lepjax.tokenizer`): resolution, special tokens, parity with the
`tokenizers` library on third-party tokenizer.json files, and model-free config checks.

Tokenizer files are the real Mistral 7B v0.1 / Llama 3 ones from mistral-common / llama-models,
and those files as transformers writes them (`hf_written_tokenizers` in conftest).
"""

import json
import os
import pathlib
import pickle
import shutil

import pytest
from conftest import CHAT_TOKENS, LLAMA3_TIKTOKEN, MISTRAL_SP, hf_instruct_tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def lines(name, n):
    return [s for s in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if s.strip()][:n]


# 400 lines: 200 Russian (UD Russian-GSD) and 200 English (UD English-EWT).
LINES = lines("ru_gsd_test.txt", 200) + lines("en_ewt_test.txt", 200)
# The same text as it also reaches a tokenizer: mid-document (after a space), several lines in
# one document, and text holding special-token strings.
VARIANTS = ([" " + t for t in LINES[::8]] + ["  ".join(LINES[i:i + 3]) for i in range(0, 60, 3)]
            + ["\n".join(LINES[i:i + 4]) for i in range(200, 240, 4)]
            + ["<s> Привет </s>", "text <|begin_of_text|> more <|eot_id|>", "  two leading"])


def reference_ids(tokenizer_json, texts):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(tokenizer_json)
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("name", ["mistral", "llama3"])
def test_third_party_tokenizer_json_encodes_as_the_tokenizers_library(name, hf_written_tokenizers,
                                                                      tmp_path):
    """Runtime tokenizer, the editable vocabulary and its re-written files: id for id."""
    from lepjax.tokenizer import load_tokenizer
    from lepjax.vocab import load_vocab, save_tokenizer

    directory = hf_written_tokenizers[name]
    texts = LINES + VARIANTS
    want = reference_ids(os.path.join(directory, "tokenizer.json"), texts)
    tok = load_tokenizer(directory)
    assert tok.format == "tokenizer.json"
    assert tok.encode(texts) == want
    vocab = load_vocab(directory)
    assert [vocab.encode(t) for t in texts] == want
    # Written back by the vocabulary package (unchanged vocabulary): still the same ids.
    vocab.__dict__.pop("hf")  # re-built from the document, not the source's object
    assert vocab.encode_batch(texts) == want
    out = save_tokenizer(vocab, str(tmp_path / "written"))
    assert load_tokenizer(out).encode(texts) == want
    assert reference_ids(os.path.join(out, "tokenizer.json"), texts) == want


def test_sentencepiece_and_tiktoken_files_encode_as_their_libraries():
    import sentencepiece as spm
    from llama_models.llama3.tokenizer import Tokenizer as Llama3

    from lepjax.tokenizer import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=MISTRAL_SP)
    mistral = load_tokenizer(MISTRAL_SP)
    assert (mistral.format, mistral.kind, mistral.vocab_size) == ("sentencepiece", "sentencepiece",
                                                                  32000)
    assert mistral.encode(LINES) == sp.encode(LINES)
    assert mistral.encode(LINES[:3], add_bos=True, add_eos=True) == [
        [1] + ids + [2] for ids in sp.encode(LINES[:3])]
    ref = Llama3(pathlib.Path(LLAMA3_TIKTOKEN))
    llama3 = load_tokenizer(LLAMA3_TIKTOKEN)
    assert (llama3.format, llama3.kind, llama3.vocab_size) == ("tiktoken", "byte_level", 128256)
    assert llama3.encode(LINES) == [ref.encode(t, bos=False, eos=False) for t in LINES]
    assert (llama3.bos_id, llama3.eos_id) == (ref.bos_id, ref.eos_id)
    assert set(llama3.stop_ids) == set(ref.stop_tokens)
    assert llama3.decode(llama3.encode(LINES[0], add_bos=True)) == LINES[0]


def test_directory_resolution_follows_transformers(tmp_path):
    """tokenizer.json (with added tokens) wins over tokenizer.model; a tiktoken file is read too."""
    from lepjax.tokenizer import load_tokenizer

    inst = hf_instruct_tokenizer(tmp_path / "instruct")
    tok = load_tokenizer(inst)
    assert tok.format == "tokenizer.json" and tok.vocab_size == 32002
    assert [tok.pieces[i] for i in (32000, 32001)] == list(CHAT_TOKENS)
    assert (tok.bos, tok.eos, tok.eos_id, tok.stop_ids) == ("<s>", "<|im_end|>", 32001, (32001,))
    assert tok.encode("<|im_start|>user", add_bos=True)[:2] == [1, 32000]
    assert tok.sentencepiece_model is None  # the .model lacks the added tokens
    assert tok.render_chat([{"role": "user", "content": "Привет"}]) == (
        "<|im_start|>user\nПривет<|im_end|>\n<|im_start|>assistant\n")
    # Only the SentencePiece model: read as such, with its own special ids.
    sp_dir = tmp_path / "sp"
    sp_dir.mkdir()
    shutil.copy(MISTRAL_SP, sp_dir / "tokenizer.model")
    sp = load_tokenizer(str(sp_dir))
    assert (sp.format, sp.vocab_size, sp.bos_id, sp.eos_id, sp.unk) == ("sentencepiece", 32000,
                                                                       1, 2, "<unk>")
    assert sp.chat_template is None
    with pytest.raises(ValueError, match="has no chat template"):
        sp.render_chat([{"role": "user", "content": "x"}])
    # Llama 3 repositories keep the tiktoken file under original/.
    l3 = tmp_path / "llama3" / "original"
    l3.mkdir(parents=True)
    shutil.copy(LLAMA3_TIKTOKEN, l3 / "tokenizer.model")
    (tmp_path / "llama3" / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [128001, 128009]}))
    tok3 = load_tokenizer(str(tmp_path / "llama3"))
    assert tok3.format == "tiktoken" and tok3.stop_ids == (128001, 128009)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(str(tmp_path))


def test_special_tokens_from_the_config_files(tmp_path):
    from lepjax.tokenizer import load_tokenizer

    d = tmp_path / "t"
    d.mkdir()
    shutil.copy(MISTRAL_SP, d / "tokenizer.model")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 13]}))
    (d / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = load_tokenizer(str(d))
    assert tok.stop_ids == (2, 13) and tok.render_chat([{"content": "hi"}]) == "<s>hi"
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<0x0A>"}}))
    assert load_tokenizer(str(d)).eos_id == 13
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"eos_token '<\|im_end\|>' is not in the vocabulary"):
        load_tokenizer(str(d))


def test_fits_pickles_and_describes(hf_written_tokenizers):
    from lepjax.tokenizer import load_tokenizer

    tok = load_tokenizer(hf_written_tokenizers["mistral"])
    tok.check_fits(32000)
    tok.check_fits(32128)
    with pytest.raises(ValueError, match=r"has 32000 ids but model m has 512 embedding rows"):
        tok.check_fits(512, "model m")
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(LINES[:20]) == tok.encode(LINES[:20])
    assert again.fingerprint() == tok.fingerprint() == load_tokenizer(MISTRAL_SP).fingerprint()
    info = tok.describe()
    assert (info["vocab_size"], info["bos_id"], info["eos_id"]) == (32000, 1, 2)


def test_lep_and_vocab_configs_are_checked_without_a_model():
    from lepjax import lep, vocab
    from lepjax.config import ConfigError
    from lepjax.lep.propagate import default_config as propagate_config
    from lepjax.vocab.config import default_config as vocab_config

    cfg = propagate_config()
    lep.validate_config(cfg)
    cfg.method = "convertion"
    with pytest.raises(ConfigError, match="propagate.method.*did you mean 'conversion'"):
        lep.validate_config(cfg)
    cfg.method, cfg.output_format = "overlap", "safetensors"
    with pytest.raises(ConfigError, match="propagate.output_format"):
        lep.validate_config(cfg)
    v = vocab_config()
    vocab.validate_config(v)
    for key, bad, hint in (("init.method", "algin", "align"), ("extend.priority", "befor", "before"),
                           ("init.output_format", "hf5", "hf"), ("replace.model", "bep", "bpe")):
        w = vocab_config()
        section, leaf = key.split(".")
        w[section][leaf] = bad
        with pytest.raises(ConfigError, match=f"{key}.*did you mean '{hint}'"):
            vocab.validate_config(w)
