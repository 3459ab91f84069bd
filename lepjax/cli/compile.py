"""`lepjax compile`: will this recipe fit on that topology? AOT-compile its train step there.

    lepjax compile --config=configs/lep/llama3_8b_ru.py --target=v5e-256 --preset=llama3_8b \
        --output=runs/fit/v5e-256.json

Compiles on this machine (no TPU needed: libtpu's deviceless topologies, the `compile` extra)
and prints per-device memory, collectives and Mosaic kernels; exits 1 when it does not fit.

GPU nodes, from a target config written once on a real GPU (scripts/gpu_target_config.py):

    JAX_PLATFORMS=cpu lepjax compile --config=configs/train/llama3_8b_cpt.py --target=gpu-8 \
        --gpu_target_config=h100.txtpb

(the `compile-gpu` extra). XLA reports no out-of-memory for GPU programs: the total is compared
with the device memory of the target config.
"""

from __future__ import annotations

import json
import os

from lepjax.cli.common import add_config_flag

HELP = "AOT-compile a train / adapt config's train step for a TPU or GPU topology: memory per chip"


def add_args(p):
    p.add_argument("--target", required=True,
                   help="a TPU slice: v5e-256, v5p-128, v4-32, v6e-64, or 2xv5e-256 (multi-slice); "
                        "or GPU nodes: gpu-8 (one node of 8), 2xgpu-8 (with --gpu_target_config)")
    p.add_argument("--num_slices", type=int, default=1, help="slices / nodes of the target (DCN)")
    p.add_argument("--gpu_target_config", default="",
                   help="GPU targets: the GPU's target config (GpuTargetConfigProto text), written "
                        "once on a real GPU by scripts/gpu_target_config.py")
    p.add_argument("--stage", default="",
                   help="adapt configs: which training of the pipeline (default: every one)")
    p.add_argument("--preset", default="",
                   help="the architecture when the model directory is not on this machine (e.g. "
                        "llama3_8b); an adapt config's vocabulary grows by extend.k")
    p.add_argument("--output", default="", help="also write the report as JSON to this file")
    add_config_flag(p, "a `lepjax train` or `lepjax adapt` config, e.g. configs/lep/llama3_8b_ru.py; "
                       "the architecture comes from model.path's config.json or model.preset")


def default_config():
    from lepjax.train.loop import default_config

    return default_config()


def _with_preset(t, preset: str, extra_vocab: int):
    """`t` computing the architecture of `preset` (its vocabulary grown by `extra_vocab`, padded
    to a multiple of 128 as vocabulary expansion pads it)."""
    from lepjax.models.config import get_preset

    vocab = get_preset(preset).vocab_size + extra_vocab
    with t.unlocked():
        t.model.path = ""
        t.model.preset = preset
        t.model.vocab_size = -(-vocab // 128) * 128 if extra_vocab else 0
    return t


def _trainings(args, cfg) -> dict:
    if "run_dir" in cfg and "demo" in cfg:  # an adapt config: its trainings
        from lepjax.adapt import trainings

        runs = trainings(cfg)
        if args.stage:
            if args.stage not in runs:
                raise ValueError(f"--stage={args.stage!r}: this adapt config trains "
                                 f"{sorted(runs)}")
            runs = {args.stage: runs[args.stage]}
        for name, t in runs.items():
            if not os.path.isdir(t.model.path):  # written by an earlier stage of the pipeline
                if not args.preset:
                    raise ValueError(f"the {name} stage trains {t.model.path}, which an earlier "
                                     "stage writes: give its architecture with --preset")
                runs[name] = _with_preset(t, args.preset, cfg.extend.k)
        return runs
    if args.preset:
        cfg = _with_preset(cfg, args.preset, 0)
    return {"train": cfg}


def run(args, cfg):
    from lepjax import compile as aot

    tgt = aot.target(args.target, args.num_slices, args.gpu_target_config)
    reports = {name: aot.compile_train_step(t, tgt) for name, t in _trainings(args, cfg).items()}
    for name, r in reports.items():
        if r["fits"]:
            print(f"{name} on {r['target']}: {r['total_gib']:.2f} GiB per device of "
                  f"{r['hbm_gib']} GiB (arguments {r['argument_gib']:.2f}, temporaries "
                  f"{r['temp_gib']:.2f}, outputs {r['output_gib']:.2f})")
        else:
            print(f"{name} on {r['target']}: does not fit: {r['error']}")
        if "memory_check" in r:
            print(f"{name} on {r['target']}: {r['memory_check']}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(reports, f, indent=2)
    bad = [n for n, r in reports.items() if not r["fits"]]
    if bad:
        raise ValueError(f"{', '.join(bad)} does not fit on {args.target} "
                         f"(report: {args.output or 'above'})")
    return reports, None
