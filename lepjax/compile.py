"""Will this recipe fit? Ahead-of-time compilation of the train step for a named topology.

    report = compile_train_step(train_cfg, target("v5e-256"))

The train step of a `lepjax train` config (or of a training stage of `lepjax adapt`) is built
with shapes only (`lepjax.train.state.build_abstract`: no weights are read), placed on a mesh of
the target's devices and compiled by the target's compiler on this machine, as MaxText's
`train_compile.py` does. TPU targets use libtpu's deviceless topologies (the `compile` extra:
`jax[tpu]` at the installed jax version); the attention kernel follows the mesh's devices, so a
TPU target compiles the real splash (Mosaic) kernel. The report holds the per-device memory
(arguments, outputs, temporaries, total against the chip's HBM), the collectives of the compiled
program and its Mosaic kernels; a program that does not fit reports the compiler's
out-of-memory message instead.

GPU targets (`gpu-8`: one node of 8 GPUs, `2xgpu-8`: two such nodes) are compiled by the CUDA
plugin's compiler (the `compile-gpu` extra: `jax[cuda12-local]`, plus `ptxas` on PATH) for the
GPU described by a target config, the `GpuTargetConfigProto` text that XLA's GPU compiler dumps;
`gpu_target_config` takes it once from a real GPU (`scripts/gpu_target_config.py`). XLA reports
no out-of-memory for GPU programs at compile time: `fits` compares the total with the device's
memory (the config's `device_memory_size`) here. On a machine without a GPU the CUDA plugin only
registers with JAX_PLATFORMS=cpu.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile
from typing import Any

import jax

GIB = 2**30

# HBM per chip (GiB) and cores per chip, by TPU generation (Cloud TPU system architecture docs).
TPU_CHIPS = {
    "v4": dict(hbm_gib=32, cores_per_chip=2, dims=3, libtpu="v4", chip_config="megacore"),
    "v5p": dict(hbm_gib=95, cores_per_chip=2, dims=3, libtpu="v5", chip_config="megacore"),
    "v5e": dict(hbm_gib=16, cores_per_chip=1, dims=2, libtpu="v5e", chip_config="default"),
    "v6e": dict(hbm_gib=32, cores_per_chip=1, dims=2, libtpu="v6e", chip_config="default"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
# Physical chip grids of the standard slice shapes.
GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
           256: (16, 16)}
GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
           128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16),
           4096: (16, 16, 16)}

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class Target:
    """The devices a program is compiled for, without the hardware."""

    name: str
    platform: str
    devices: list[Any]
    memory_gib: float
    num_slices: int = 1
    device_kind: str = ""


def _tpu(name: str, num_slices: int) -> Target:
    m = re.fullmatch(r"(?:(\d+)x)?(v\d+[a-z]*)-(\d+)", name)
    if not m:
        raise ValueError(f"TPU target {name!r} is not of the form GEN-SIZE (v5e-256, v5p-128, "
                         f"v4-32, v6e-64) or SLICESxGEN-SIZE (2xv5e-256)")
    slices = int(m.group(1) or num_slices)
    gen = ALIASES.get(m.group(2), m.group(2))
    if gen not in TPU_CHIPS:
        raise ValueError(f"TPU generation {m.group(2)!r} unknown; known: {sorted(TPU_CHIPS)}")
    chip = TPU_CHIPS[gen]
    size = int(m.group(3))
    chips = size // chip["cores_per_chip"]
    grids = GRID_3D if chip["dims"] == 3 else GRID_2D
    if chips not in grids:
        sizes = sorted(c * chip["cores_per_chip"] for c in grids)
        raise ValueError(f"{gen}-{size}: no standard slice of that size; sizes: {sizes}")
    grid = grids[chips]
    # libtpu takes /tmp/libtpu_lockfile so that one process owns the local TPU; a deviceless
    # topology owns none, and two compiles (pytest -n 2, two targets at once) must not collide.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{chip['libtpu']}:{'x'.join(map(str, grid))}",
            chip_config_name=chip["chip_config"],
            chips_per_host_bounds=(2, 4, 1) if chips == 8 and chip["dims"] == 2 else
            (1, 1, 1) if chips == 1 else (2, 2, 1),
            num_slices=slices, wrap=tuple(d >= 4 for d in (*grid, 1)[:3]) if chip["dims"] == 3
            else (False, False, False))
    except (ImportError, RuntimeError) as e:
        raise ValueError(f"cannot build the {name} topology: {e}; install the compile extra "
                         "(pip install 'lepjax[compile]', i.e. jax[tpu] at this jax version)"
                         ) from None
    return Target(f"{slices}x{gen}-{size}" if slices > 1 else f"{gen}-{size}", "tpu",
                  list(topo.devices), chip["hbm_gib"], slices)


def _gpu(name: str, num_slices: int, target_config: str) -> Target:
    m = re.fullmatch(r"(?:(\d+)x)?gpu-(\d+)", name)
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"GPU target {name!r} is not of the form gpu-GPUS_PER_NODE (gpu-8) or "
                         "NODESxgpu-GPUS_PER_NODE (2xgpu-8)")
    nodes, per_node = int(m.group(1) or num_slices), int(m.group(2))
    if not target_config:
        raise ValueError(f"GPU target {name!r} needs --gpu_target_config FILE: the target config "
                         "of the GPU, written once on a real one by scripts/gpu_target_config.py")
    with open(target_config, encoding="utf-8") as f:
        text = f.read()
    memory = re.search(r"\bdevice_memory_size:\s*(\d+)", text)
    if not memory:
        raise ValueError(f"{target_config} has no gpu_device_info.device_memory_size: not a GPU "
                         "target config (GpuTargetConfigProto text)")
    try:
        from jax.experimental import topologies

        topo = topologies.get_topology_desc(platform="cuda", topology=f"1x{nodes}x{per_node}",
                                            target_config=text)
    except NotImplementedError:
        raise ValueError(f"cannot build the {name} topology: the CUDA plugin is not registered; "
                         "install the compile-gpu extra (pip install 'lepjax[compile-gpu]', i.e. "
                         "jax[cuda12-local]) and, on a machine without a GPU, run with "
                         "JAX_PLATFORMS=cpu") from None
    except jax.errors.JaxRuntimeError as e:
        raise ValueError(f"cannot build the {name} topology from {target_config}: {e}") from None
    devices = list(topo.devices)
    return Target(f"{nodes}x{name.split('x')[-1]}" if nodes > 1 else name, "gpu", devices,
                  round(int(memory.group(1)) / GIB, 2), nodes, devices[0].device_kind)


def target(name: str, num_slices: int = 1, gpu_target_config: str = "") -> Target:
    """The target of a topology name: TPU slices (`v5e-256`, `v5p-128`, `v4-32`, `v6e-64`,
    `2xv5e-256` or `num_slices` for multi-slice), or GPU nodes (`gpu-8`, `2xgpu-8`) of the GPU
    that `gpu_target_config` (a target config file, see `gpu_target_config`) describes."""
    name = name.strip().lower()
    if name.startswith(("v4", "v5", "v6")) or re.match(r"\d+xv", name):
        return _tpu(name, num_slices)
    if re.match(r"(\d+x)?gpu", name):
        return _gpu(name, num_slices, gpu_target_config)
    raise ValueError(f"unknown target {name!r}: give a TPU slice such as v5e-256, v5p-128, "
                     "v4-32, v6e-64 or 2xv5e-256, or GPU nodes such as gpu-8 or 2xgpu-8")


def gpu_target_config(device: Any = None) -> str:
    """The target config (`GpuTargetConfigProto` text) of a GPU, as XLA's GPU compiler dumps it
    when compiling for `device` (default: the first attached GPU). Run once on a real GPU and
    save it: `lepjax compile --target=gpu-8 --gpu_target_config=FILE` compiles for that GPU on any
    machine."""
    import jax.numpy as jnp

    device = jax.devices("gpu")[0] if device is None else device
    x = jax.ShapeDtypeStruct((8,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
    with tempfile.TemporaryDirectory() as d:
        jax.jit(lambda v: v + 1).lower(x).compile({"xla_dump_to": d})
        found = glob.glob(os.path.join(d, "*gpu_target_config.pbtxt"))
        if not found:
            raise RuntimeError(f"XLA wrote no gpu_target_config.pbtxt for {device}: is it a GPU?")
        with open(found[0], encoding="utf-8") as f:
            return f.read()


def _kernel_counts(hlo: str) -> dict[str, int]:
    counts = {c: len(re.findall(rf"\b{c}(?:-start)?\(", hlo)) for c in COLLECTIVES}
    counts["mosaic_kernels"] = hlo.count('custom_call_target="tpu_custom_call"')
    counts["cudnn_attention_kernels"] = len(re.findall(r'custom_call_target="__cudnn\$fmha', hlo))
    return counts


def _oom(message: str) -> bool:
    return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message or \
        "out of memory" in message.lower()


def compile_train_step(cfg: Any, tgt: Target) -> dict[str, Any]:
    """Compile `cfg`'s train step (a `lepjax train` config) for `tgt`; the memory report.

    `fits` is False with the compiler's message in `error` when the program does not fit.
    """
    from lepjax import parallel
    from lepjax.train import state as train_state

    mesh = parallel.make_mesh({a: cfg.mesh[a] for a in parallel.MESH_AXES}, devices=tgt.devices,
                              dcn={a: cfg.mesh.get(f"dcn_{a}", 1) for a in parallel.MESH_AXES})
    rules = parallel.rules_from_config(cfg.mesh.get("rules"))
    setup = train_state.build_abstract(cfg, mesh=mesh, rules=rules)
    batch = train_state.abstract_batch(cfg.data.batch_size, cfg.data.seq_len, setup.batch_sharding)
    report: dict[str, Any] = {
        "target": tgt.name, "platform": tgt.platform, "devices": len(tgt.devices),
        "mesh": dict(mesh.shape), "global_batch": cfg.data.batch_size,
        "seq_len": cfg.data.seq_len, "micro_batches": cfg.train.micro_batches,
        "remat_policy": cfg.model.remat_policy,
        "attention": cfg.model.attention, "trainable": cfg.train.trainable,
        "num_params": setup.model.config.num_params, "hbm_gib": tgt.memory_gib}
    if tgt.platform == "gpu":
        report.update(device_kind=tgt.device_kind, memory_check=(
            "XLA reports no out-of-memory for GPU programs at compile time: fits compares "
            "total_gib with the device memory of the target config, of which JAX's allocator "
            "takes 75% by default (XLA_PYTHON_CLIENT_MEM_FRACTION)"))
    try:
        with parallel.activation_sharding(mesh, rules):
            lowered = setup.train_step().lower(setup.state, setup.frozen, batch)
        compiled = lowered.compile()
    except Exception as e:  # the compiler's out-of-memory is an XlaRuntimeError
        msg = str(e)
        if "cuDNN not found" in msg:
            raise ValueError(f"model.attention={cfg.model.attention!r} is cuDNN attention on "
                             f"{tgt.name}, and JAX checks the cuDNN version while tracing it: "
                             "install cuDNN here (the compile-gpu extra), or compile "
                             "model.attention=xla") from None
        if not _oom(msg):
            raise
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        report.update(fits=False, error=" ".join(lines[:3])[:2000])
        return report
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    report.update(
        argument_gib=round(m.argument_size_in_bytes / GIB, 3),
        output_gib=round(m.output_size_in_bytes / GIB, 3),
        temp_gib=round(m.temp_size_in_bytes / GIB, 3),
        alias_gib=round(m.alias_size_in_bytes / GIB, 3),
        total_gib=round(total / GIB, 3),
        fits=total <= tgt.memory_gib * GIB,
        **_kernel_counts(compiled.as_text()))
    if not report["fits"]:
        report["error"] = (f"{total / GIB:.2f} GiB per device (arguments + outputs + temporaries "
                           f"- aliased) exceeds the device's {tgt.memory_gib} GiB")
    return report
