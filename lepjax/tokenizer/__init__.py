"""THE runtime tokenizer: one way to read a tokenizer, for every package of lepjax.

    tok = load_tokenizer("path/to/model_dir")        # or a tokenizer.json / tokenizer.model file
    ids = tok.encode(["Привет, мир", "Hello"], add_bos=True)
    tok.decode(ids[0]), tok.bos_id, tok.eos_id, tok.stop_ids, tok.render_chat(messages)
    tok.check_fits(model_config.vocab_size, "model_dir")

Resolving a directory follows transformers: a `tokenizer.json` (with its added tokens) wins over
`tokenizer.model`; a `tokenizer.model` alone is read as a SentencePiece model, or as a tiktoken
ranks file (Llama 3's original tokenizer, also looked for under `original/`). Encoding runs
through the `tokenizers` library: on the file itself for a `tokenizer.json` (so ids equal that
library's on any file), on an equivalent document for the other two
(`lepjax.tokenizer.convert`).

Special tokens come from the tokenizer files beside it, parsed here and nowhere else:
`tokenizer_config.json` (bos/eos/unk tokens, chat template), else
`special_tokens_map.json`, else the format's own convention (SentencePiece trainer ids,
`<|begin_of_text|>`/`<|end_of_text|>`, `<s>`/`</s>`); `generation_config.json`'s
`eos_token_id`s are extra stop ids; `chat_template.jinja` / `chat_template.json` hold the
chat template when the config does not.
"""

from lepjax.tokenizer.runtime import Tokenizer, load_tokenizer, read_special_config, resolve

__all__ = ["Tokenizer", "load_tokenizer", "read_special_config", "resolve"]
