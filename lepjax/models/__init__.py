"""Llama 2/3 and Mistral as one Flax NNX decoder, with Hugging Face interop.

    model, config = lepjax.models.load("path/to/hf-or-lepjax-dir")
    logits = model(tokens)  # [batch, length, vocab]
"""

from lepjax.models.api import detect_format, from_config, load, make_forward, model_section
from lepjax.models.config import (PRESETS, Compute, ModelConfig, RopeScaling, get_preset,
                                  validate_compute)
from lepjax.models.hf import load_hf, save_hf
from lepjax.models.io import create_model, load_lepjax, save
from lepjax.models.transformer import Decoder

__all__ = [
    "PRESETS", "Compute", "Decoder", "ModelConfig", "RopeScaling", "create_model", "detect_format",
    "from_config", "get_preset", "load", "load_hf", "load_lepjax", "make_forward",
    "model_section", "save", "save_hf", "validate_compute",
]
