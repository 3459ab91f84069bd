"""Model configuration: the architecture of every Llama/Mistral variant, presets, HF config.json,
and the compute settings a command runs a model with.

Llama 2, Llama 3 / 3.1 / 3.2 and Mistral 7B v0.1 are configurations of one decoder: they differ in
vocabulary, grouped-query attention, rope base and scaling, sliding-window attention and whether
the LM head is tied to the input embeddings. `ModelConfig` holds that architecture and is what a
model directory stores. `Compute` (dtype, parameter dtype, attention kernel, remat policy) changes
how the function is computed, not which function: it is a run option of the command that runs the
model, never stored with the weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any

from lepjax.config import ConfigError

DTYPES = ("bfloat16", "float32", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
COMPUTE_CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": DTYPES, "param_dtype": PARAM_DTYPES, "attention": ATTENTION_IMPLS,
    "remat_policy": REMAT_POLICIES,
}


@dataclasses.dataclass(frozen=True)
class Compute:
    """How a model computes: run options of the command, not properties of the model.

    dtype: activations and matmuls (softmax and norms accumulate in float32).
    param_dtype: the dtype parameters are held in on the devices.
    attention: kernel: auto (cudnn on GPU with a 16-bit dtype, splash on TPU, xla otherwise) |
      xla | cudnn | splash.
    remat_policy: rematerialisation of the scanned layers: none | full | dots | dots_no_batch.
    """

    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat_policy: str = "full"

    def __post_init__(self):
        for key, choices in COMPUTE_CHOICES.items():
            check_choice(f"model.{key}", getattr(self, key), choices)

    def replace(self, **changes: Any) -> "Compute":
        """A copy with some settings changed (validated)."""
        unknown = sorted(set(changes) - set(COMPUTE_CHOICES))
        if unknown:
            raise ValueError(f"{unknown} are not compute settings; compute settings are "
                             f"{sorted(COMPUTE_CHOICES)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_section(cls, section: Any) -> "Compute":
        """The compute settings of a config `model` section (keys it lacks keep their default)."""
        return cls(**{k: section[k] for k in COMPUTE_CHOICES if k in section})


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """A `ConfigError` naming `key` and the closest valid values unless `value` is one of them."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=2, cutoff=0.3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ConfigError(f"{key}={value!r} is not valid{hint} (choices: {', '.join(choices)})")


def validate_compute(section: Any) -> Compute:
    """Check the compute settings of a config `model` section without reading any model.

    Raises `ConfigError` naming the key and the closest valid values; returns the `Compute`.
    """
    return Compute.from_section(section)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 style rope frequency scaling (`rope_type: llama3` in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture of a decoder-only Llama/Mistral model (what a model directory stores).

    Fields mirror Hugging Face's config.json. How the model computes (dtype, attention kernel,
    remat) is a `Compute`, chosen by the command that runs it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    architecture: str = "llama"  # "llama" or "mistral": the HF model class written at export
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # The dtype the weights had on disk when imported (used as the default export dtype).
    checkpoint_dtype: str = "float32"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.architecture not in ("llama", "mistral"):
            raise ValueError(f"architecture={self.architecture!r}; expected 'llama' or 'mistral'")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated like the original)."""
        _refuse_compute(changes)
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Number of parameters (embeddings and LM head included)."""
        d, f, L = self.hidden_size, self.intermediate_size, self.num_layers
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + L * per_layer + d + head

    # ---- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (round-trips through `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them.

        Files written before compute settings became run options (lepjax.json format 1, a
        training run's run_model.json) also hold dtype / param_dtype / attention / remat_policy:
        those are dropped, so a model trained with `attention=splash` runs with the kernel the
        loading command picks.
        """
        d = {k: v for k, v in d.items() if k not in COMPUTE_CHOICES}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict[str, Any], **overrides: Any) -> "ModelConfig":
        """Build from a Hugging Face `config.json` (path to the file or its directory, or the dict).

        Reads both the transformers v4 keys (`rope_theta`, `rope_scaling`) and the v5 key
        `rope_parameters`.
        """
        if isinstance(source, dict):
            hf, where = source, "config.json"
        else:
            path = where = os.fspath(source)
            if os.path.isdir(path):
                path = where = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                try:
                    hf = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e})") from None
        _check_hf_fields(hf, where)
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral"):
            raise ValueError(f"unsupported model_type {model_type!r} (lepjax supports llama, mistral)")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (expected silu)")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise ValueError(f"unsupported {flag}=true")
        rope = dict(hf.get("rope_parameters") or {})
        legacy = hf.get("rope_scaling") or {}
        rope = {**legacy, **rope}
        theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if rope_type == "llama3":
            scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        elif rope_type != "default":
            raise ValueError(f"unsupported rope type {rope_type!r} (supported: default, llama3)")
        heads = hf["num_attention_heads"]
        sliding = hf.get("sliding_window") if model_type == "mistral" else None
        if hf.get("use_sliding_window") is False:
            sliding = None
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        kwargs: dict[str, Any] = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            sliding_window=sliding,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            architecture=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
            checkpoint_dtype=str(dtype),
        )
        _refuse_compute(overrides)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self, dtype: str | None = None) -> dict[str, Any]:
        """A Hugging Face `config.json` dict for `LlamaForCausalLM` / `MistralForCausalLM`."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta,
                    **dataclasses.asdict(self.rope_scaling)}
        cls_name = "MistralForCausalLM" if self.architecture == "mistral" else "LlamaForCausalLM"
        hf: dict[str, Any] = {
            "architectures": [cls_name],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else {
                k: v for k, v in rope.items() if k != "rope_theta"},
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_cache": True,
            "dtype": dtype or self.checkpoint_dtype,
        }
        if self.architecture == "llama":
            hf["mlp_bias"] = False
        else:
            hf["sliding_window"] = self.sliding_window
        return hf


_LLAMA31_SCALING = RopeScaling(8.0, 1.0, 4.0, 8192)

PRESETS: dict[str, ModelConfig] = {
    "llama2_7b": ModelConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
        num_kv_heads=32, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=4096, checkpoint_dtype="float16"),
    "llama3_8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001,
        checkpoint_dtype="bfloat16"),
    "llama3_1_8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=500000.0, rope_scaling=_LLAMA31_SCALING,
        rms_norm_eps=1e-5, max_position_embeddings=131072, bos_token_id=128000,
        eos_token_id=128001, checkpoint_dtype="bfloat16"),
    "llama3_2_1b": ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
        eos_token_id=128001, checkpoint_dtype="bfloat16"),
    "mistral_7b_v0_1": ModelConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=32768, sliding_window=4096, architecture="mistral",
        checkpoint_dtype="bfloat16"),
    # The 1.1B Llama shape of the training benchmark (TinyLlama-1.1B).
    "llama_1_1b": ModelConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
        num_kv_heads=4, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=2048, checkpoint_dtype="bfloat16"),
    # Tiny configurations for tests and CPU demos (random weights).
    "tiny_llama2": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
        num_kv_heads=4, head_dim=16, max_position_embeddings=512),
    "tiny_llama3": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64), max_position_embeddings=512),
    "tiny_mistral": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=8,
        architecture="mistral"),
}


_HF_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads")
_HF_OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings",
                     "sliding_window")
_HF_NUMBERS = ("rms_norm_eps", "rope_theta", "initializer_range")


def _check_hf_fields(hf: Any, where: str) -> None:
    """A ValueError naming `where` (the config.json) and the field for a missing or ill-typed
    architecture field."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    missing = [k for k in _HF_INTS if k not in hf]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for k in _HF_INTS + _HF_OPTIONAL_INTS:
        v = hf.get(k)
        if (k in _HF_INTS or v is not None) and (type(v) is not int or v <= 0):
            raise ValueError(f"{where}: {k} is {v!r}; expected a positive integer")
    for k in _HF_NUMBERS:
        v = hf.get(k)
        if v is not None and (type(v) not in (int, float)):
            raise ValueError(f"{where}: {k} is {v!r}; expected a number")


def _refuse_compute(fields: dict[str, Any]) -> None:
    wrong = sorted(set(fields) & set(COMPUTE_CHOICES))
    if wrong:
        raise ValueError(f"{wrong} are compute settings, not architecture: pass them to the "
                         "function that builds or loads the model (e.g. models.load(path, "
                         "dtype='float32'), models.create_model(config, attention='xla'))")


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name (see `PRESETS`), with optional architecture overrides."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        raise ValueError(f"unknown model preset {name!r}; closest: {close}; all: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
