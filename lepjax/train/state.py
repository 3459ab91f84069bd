"""Everything a training run holds before its first step (MaxText's `setup_train_loop`).

    setup = build(cfg, mesh=mesh, rules=rules)     # checks, loads the weights, places the state
    step = setup.train_step()                      # jitted, explicit shardings, state donated
    state, metrics = step(setup.state, setup.frozen, batch)

In order, and failing as early as possible:
1. the architecture is read from the model directory's metadata (or the preset), never its
   weights, and the `train.trainable` selection and the LoRA targets / layers are checked against
   the abstract (shape-only) model, as is the global batch against the mesh: a typo or a batch
   the batch mesh axes do not divide costs no weight load;
2. the weights are loaded (or created) straight into their shards;
3. the parameters are split into trained and frozen ones (`lepjax.train.params`), LoRA adapters
   and the multi-token-prediction head are added to the trained ones;
4. every leaf gets an explicit `NamedSharding` on the mesh: parameters by their logical axes,
   LoRA adapters and scalars (the step, Adam's `count`) replicated, Adam's moments as the
   parameter they belong to;
5. the optimiser state is created in those shardings.

`build_abstract` does the same with shapes only (ShapeDtypeStructs carrying their shardings), for
memory estimates and ahead-of-time compilation without any weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from lepjax import models, parallel
from lepjax.config import ConfigError
from lepjax.models import io as model_io
from lepjax.models.config import Compute, ModelConfig, get_preset
from lepjax.train import lora as lora_lib
from lepjax.train import params as P
from lepjax.train.optim import make_optimizer
from lepjax.train.step import StepBuilder

MTP_HEAD = "mtp_head"


@dataclasses.dataclass(frozen=True)
class AbstractModel:
    """A model's structure without weights: parameter paths, shapes and logical axes."""

    config: ModelConfig
    compute: Compute
    graphdef: Any
    treedef: Any
    paths: list[str]
    structs: dict[str, jax.ShapeDtypeStruct]
    axes: dict[str, tuple[str | None, ...]]


def model_config(section: Any) -> ModelConfig:
    """The architecture a config `model` section describes, read from the model directory's
    metadata (config.json / lepjax.json) or the preset; no weight file is opened."""
    if section.get("path"):
        if models.detect_format(section.path) == "lepjax":
            return model_io.read_lepjax_config(section.path)
        return ModelConfig.from_hf(section.path)
    arch = {"vocab_size": section.vocab_size} if section.get("vocab_size") else {}
    return get_preset(section.preset, **arch)


def abstract_model(config: ModelConfig, compute: Compute = Compute()) -> AbstractModel:
    """The shape-only model of `config` computed with `compute` (allocates nothing)."""
    graphdef, abstract = model_io.abstract_model(config, compute)
    variables, _ = model_io.flatten_tree(abstract, is_leaf=model_io.is_variable)
    structs, treedef = model_io.flatten_tree(abstract)
    axes = {p: tuple(v.get_metadata().get("logical_axes") or (None,) * len(v.shape))
            for p, v in variables.items()}
    return AbstractModel(config, compute, graphdef, treedef, list(structs),
                         {p: jax.ShapeDtypeStruct(s.shape, s.dtype) for p, s in structs.items()},
                         axes)


def select_trainable(train_cfg: Any, am: AbstractModel) -> P.Selection:
    """The `train.trainable` selection for `am`, with LoRA targets and layers checked; a
    ConfigError when nothing would train."""
    selection = P.select(train_cfg.trainable, am.paths, am.config.num_layers)
    lora = train_cfg.lora
    if lora.rank > 0:
        lora_lib.check_section(lora)
        lora_lib.layer_indices(lora.layers, am.config.num_layers)
        missing = [t for t in lora.targets if lora_lib.TARGETS[t][0] not in am.paths]
        if missing:
            raise ConfigError(f"train.lora.targets {missing}: the model has no such projection")
    elif not selection:
        raise ConfigError(f"train.trainable={train_cfg.trainable!r} selects no parameter and "
                          "LoRA is off (train.lora.rank=0): nothing would train")
    return selection


def batch_axes(mesh: Mesh, rules: parallel.Rules) -> list[str]:
    """The mesh axes (of size > 1) the `batch` logical axis is sharded over."""
    target = dict(rules).get("batch")
    axes = [] if target is None else [target] if isinstance(target, str) else list(target)
    return [a for a in axes if mesh.shape[a] > 1]


def batch_sharding(mesh: Mesh, rules: parallel.Rules, batch_size: int, seq_len: int,
                   micro_batches: int = 1) -> NamedSharding:
    """The sharding of a [batch_size, seq_len] global batch: rows over the batch mesh axes.

    A batch (or micro-batch) those axes do not divide is a ConfigError naming the batch size and
    the mesh; it is never silently replicated.
    """
    if micro_batches < 1 or batch_size % micro_batches:
        raise ConfigError(f"data.batch_size={batch_size} is not divisible by "
                          f"train.micro_batches={micro_batches}")
    axes = batch_axes(mesh, rules)
    n = math.prod(mesh.shape[a] for a in axes)
    rows = batch_size // micro_batches
    if rows % n:
        what = (f"data.batch_size={batch_size}" if micro_batches == 1 else
                f"the micro-batch of {rows} rows (data.batch_size={batch_size} / "
                f"train.micro_batches={micro_batches})")
        raise ConfigError(
            f"{what} cannot be sharded over the batch mesh axes {axes} ({n} devices) of mesh "
            f"{dict(mesh.shape)}: make it a multiple of {n}, or shrink those axes (mesh.data, "
            "mesh.fsdp) or the `batch` rule")
    spec = PartitionSpec(None if not axes else axes[0] if len(axes) == 1 else tuple(axes), None)
    return NamedSharding(mesh, spec)


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _split(flat: dict[str, Any], selection: P.Selection, train_cfg: Any, num_layers: int,
           seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable, frozen) flat dicts, LoRA adapters and the MTP head included in trainable."""
    trainable, frozen = P.split(flat, selection, train_cfg.frozen_dtype or None)
    if train_cfg.lora.rank > 0:
        trainable.update(lora_lib.init(flat, train_cfg.lora, num_layers, seed=seed))
    if train_cfg.mtp:
        trainable[MTP_HEAD] = flat["lm_head"] if "lm_head" in flat else flat["embed"].T
    return trainable, frozen


def leaf_shardings(am: AbstractModel, tree: dict[str, Any], mesh: Mesh,
                   rules: parallel.Rules) -> dict[str, NamedSharding]:
    """A NamedSharding per flat parameter: by its logical axes (the MTP head as the LM head's),
    replicated for LoRA adapters."""
    out = {}
    for path, x in tree.items():
        axes = am.axes.get(path, ("embed", "vocab") if path == MTP_HEAD else None)
        out[path] = (_replicated(mesh) if axes is None else
                     parallel.named_sharding(mesh, axes, rules, x.shape))
    return out


def opt_state_shardings(abstract_opt_state: Any, trainable_sh: dict[str, NamedSharding],
                        trainable: dict[str, Any], mesh: Mesh) -> Any:
    """A NamedSharding for every optimiser-state leaf: a per-parameter leaf (Adam's moments) as
    its parameter, everything else (Adam's `count`, schedule state) replicated."""

    def one(path, leaf):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        name = keys[-1] if keys else None
        if name in trainable_sh and tuple(leaf.shape) == tuple(trainable[name].shape):
            return trainable_sh[name]
        return _replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


@dataclasses.dataclass
class TrainSetup:
    """What the loop runs: the state (step, trained parameters, optimiser state), the frozen
    parameters, their shardings, and the step functions (see `train_step`, `eval_step`)."""

    model: AbstractModel
    mesh: Mesh
    rules: parallel.Rules
    selection: P.Selection
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    builder: StepBuilder
    state: dict[str, Any]
    frozen: dict[str, Any]
    state_shardings: dict[str, Any]
    frozen_shardings: dict[str, NamedSharding]
    batch_sharding: NamedSharding

    def train_step(self):
        """`step(state, frozen, batch) -> (state, metrics)`, jitted with explicit shardings; the
        state's buffers are donated."""
        return jax.jit(self.builder.train_step,
                       in_shardings=(self.state_shardings, self.frozen_shardings,
                                     self.batch_sharding),
                       out_shardings=(self.state_shardings, _replicated(self.mesh)),
                       donate_argnums=(0,))

    def eval_step(self):
        """`evaluate(trainable, frozen, batch) -> sums` (see `StepBuilder.eval_step`), jitted."""
        return jax.jit(self.builder.eval_step,
                       in_shardings=(self.state_shardings["trainable"], self.frozen_shardings,
                                     self.batch_sharding),
                       out_shardings=_replicated(self.mesh))


def _check(cfg: ConfigDict, mesh: Mesh, rules: parallel.Rules, am: AbstractModel
           ) -> tuple[P.Selection, NamedSharding]:
    selection = select_trainable(cfg.train, am)
    batch_sh = batch_sharding(mesh, rules, cfg.data.batch_size, cfg.data.seq_len,
                              cfg.train.micro_batches)
    return selection, batch_sh


def _assemble(cfg: ConfigDict, mesh: Mesh, rules: parallel.Rules, am: AbstractModel,
              selection: P.Selection, batch_sh: NamedSharding, graphdef: Any, treedef: Any,
              flat: dict[str, Any] | None, vocab_limit: int | None) -> TrainSetup:
    tc = cfg.train
    seed = cfg.model.get("seed", 0)
    split = lambda f: _split(f, selection, tc, am.config.num_layers, seed)  # noqa: E731
    trainable_abs, frozen_abs = jax.eval_shape(split, am.structs)
    # LoRA adapters and the MTP head train whole.
    selection = {**selection, **{k: None for k in trainable_abs if k not in selection}}
    trainable_sh = leaf_shardings(am, trainable_abs, mesh, rules)
    frozen_sh = leaf_shardings(am, frozen_abs, mesh, rules)
    tx, schedule = make_optimizer(cfg.optim, tc.steps, trainable_abs)
    opt_abs = jax.eval_shape(tx.init, trainable_abs)
    opt_sh = opt_state_shardings(opt_abs, trainable_sh, trainable_abs, mesh)
    state_sh = {"step": _replicated(mesh), "trainable": trainable_sh, "opt_state": opt_sh}
    if flat is None:
        with_sh = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
        state = jax.tree.map(with_sh, {"step": jax.ShapeDtypeStruct((), jnp.int32),
                                       "trainable": trainable_abs, "opt_state": opt_abs},
                             state_sh)
        frozen = jax.tree.map(with_sh, frozen_abs, frozen_sh)
    else:
        trainable, frozen = split(flat)
        if MTP_HEAD in trainable:  # its own buffer (the state is donated)
            trainable[MTP_HEAD] = jax.jit(lambda x: x, out_shardings=trainable_sh[MTP_HEAD])(
                trainable[MTP_HEAD])
        trainable = jax.device_put(trainable, trainable_sh)
        frozen = jax.device_put(frozen, frozen_sh)
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
        state = {"step": jax.device_put(jnp.zeros((), jnp.int32), _replicated(mesh)),
                 "trainable": trainable, "opt_state": opt_state}
    builder = StepBuilder(graphdef, treedef, am.paths, selection, tx, schedule, tc, mesh, rules,
                          lora=tc.lora if tc.lora.rank > 0 else None,
                          num_layers=am.config.num_layers, vocab_limit=vocab_limit)
    return TrainSetup(am, mesh, rules, selection, tx, schedule, builder, state, frozen, state_sh,
                      frozen_sh, batch_sh)


def build(cfg: ConfigDict, *, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES,
          model: models.Decoder | None = None, vocab_limit: int | None = None) -> TrainSetup:
    """The train setup of a `lepjax train` config: checked against the abstract model first,
    then the weights of `cfg.model` loaded (or `model` used) and the state placed on `mesh`.

    `vocab_limit`: LM-head rows at or beyond it are embedding padding, excluded from the loss.
    """
    compute = models.validate_compute(cfg.model)
    am = abstract_model(model.config if model is not None else model_config(cfg.model), compute)
    selection, batch_sh = _check(cfg, mesh, rules, am)
    if model is None:
        model = models.from_config(cfg.model, mesh=mesh, rules=rules)
    graphdef, state = nnx.split(model)
    flat, treedef = model_io.flatten_tree(state)
    del model, state
    if list(flat) != am.paths or any(flat[p].shape != am.structs[p].shape for p in am.paths):
        raise ValueError(f"the loaded model's parameters differ from those its config describes: "
                         f"{ {p: tuple(v.shape) for p, v in flat.items()} } vs "
                         f"{ {p: s.shape for p, s in am.structs.items()} }")
    return _assemble(cfg, mesh, rules, am, selection, batch_sh, graphdef, treedef, flat,
                     vocab_limit)


def build_abstract(cfg: ConfigDict, *, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES,
                   config: ModelConfig | None = None, vocab_limit: int | None = None
                   ) -> TrainSetup:
    """`build` with shapes only: state and frozen parameters are ShapeDtypeStructs carrying
    their shardings (for `jax.jit(...).lower(...)`); reads no weights. `config` overrides the
    architecture of `cfg.model`."""
    am = abstract_model(config or model_config(cfg.model), models.validate_compute(cfg.model))
    selection, batch_sh = _check(cfg, mesh, rules, am)
    return _assemble(cfg, mesh, rules, am, selection, batch_sh, am.graphdef, am.treedef, None,
                     vocab_limit)


def abstract_batch(batch_size: int, seq_len: int, sharding: NamedSharding | None = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of a training batch (what `lepjax.data.loader.Loader` yields)."""
    ints = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=sharding)
    mask = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32, sharding=sharding)
    return {"tokens": ints, "targets": ints, "loss_mask": mask, "segment_ids": ints,
            "positions": ints}
