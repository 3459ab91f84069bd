"""Decoding: the KV-cache generator, loading a model with its tokenizer, the OpenAI server.

    from lepjax.generate import Generator, SamplingParams
    out = Generator(model, vocab_limit=tok.vocab_size).generate(prompt_ids, SamplingParams())

Modules: `generator` (batched KV-cache decoding and sampling), `load` (a model with the tokenizer
that fits it; prompt files), `files` (`lepjax generate`: a prompts file to a completions JSONL),
`server` (`lepjax serve`: OpenAI-compatible completions and chat completions).
"""

from lepjax.generate.generator import Completion, Generator, SamplingParams, sample
from lepjax.generate.load import load_for_decoding, read_prompts

__all__ = ["Completion", "Generator", "SamplingParams", "load_for_decoding", "read_prompts",
           "sample"]
