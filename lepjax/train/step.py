"""Loss and the jitted train / eval steps.

The loss is cross-entropy in float32 over `loss_mask`, summed over tokens and divided by the
number of trained tokens of the whole (global) batch, plus optional z-loss
(`z_loss * logsumexp²`) and an optional multi-token-prediction head (an extra [embed, vocab]
head predicting token t+2 from the same hidden state; its loss is added). The LM head and the
loss run in chunks of `loss_chunk` positions under `jax.checkpoint`, so float32 logits of the
whole batch never exist at once (a 128K vocabulary would need 64 GB for 64 × 2,048 tokens).

Gradient accumulation splits the global batch into `micro_batches` and sums gradients of the
summed loss over a `jax.lax.scan`, then divides by the total token count: the result equals the
full-batch gradient up to summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lepjax import parallel
from lepjax.train import lora as lora_lib
from lepjax.train import params as P


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          mask: jax.Array, chunk: int, z_loss: float = 0.0):
    """(sum of CE, sum of z-loss terms, correct predictions) over masked positions.

    hidden [b, t, d] (compute dtype), head [d, v], targets / mask [b, t]. Logits are formed in
    float32 `chunk` positions at a time and rematerialised in the backward pass.
    """
    b, t, d = hidden.shape
    chunk = chunk if chunk and t % chunk == 0 else t
    n = t // chunk

    def one(carry, xs):
        h, y, m = xs
        logits = jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype),
                            preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        ce = ((lse - picked) * m).sum()
        z = ((lse ** 2) * m).sum()
        correct = ((jnp.argmax(logits, -1) == y) * m).sum()
        return (carry[0] + ce, carry[1] + z, carry[2] + correct), None

    one = jax.checkpoint(one, prevent_cse=False)
    split = lambda x: jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731
    zero = jnp.zeros((), jnp.float32)
    (ce, z, correct), _ = jax.lax.scan(one, (zero, zero, zero),
                                       (split(hidden), split(targets), split(mask)))
    return ce, z * z_loss, correct


def second_targets(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Targets and mask for predicting token t+2 (multi-token prediction)."""
    targets, mask = batch["targets"], batch["loss_mask"]
    t2 = jnp.concatenate([targets[:, 1:], jnp.zeros_like(targets[:, :1])], axis=1)
    m2 = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1) * mask
    return t2, m2


class StepBuilder:
    """Builds the pure loss / train / eval functions for one model, selection and optimiser."""

    def __init__(self, graphdef, treedef, paths: list[str], selection: P.Selection,
                 tx: optax.GradientTransformation | None, schedule, train_cfg: Any,
                 mesh=None, rules=parallel.DEFAULT_RULES, lora=None, num_layers: int = 0):
        self.lora, self.num_layers = lora, num_layers
        self.graphdef, self.treedef, self.paths = graphdef, treedef, paths
        self.selection, self.tx, self.schedule, self.cfg = selection, tx, schedule, train_cfg
        self.mesh, self.rules = mesh, rules

    def model(self, trainable, frozen):
        full = P.merge(trainable, frozen, self.selection)
        if self.lora is not None:
            full = lora_lib.apply(full, self.lora, self.num_layers)
        state = jax.tree.unflatten(self.treedef, [full[p] for p in self.paths])
        return nnx.merge(self.graphdef, state)

    def summed_loss(self, trainable, frozen, batch):
        """(sum CE [+ MTP CE] + z terms, metrics) for one (micro-)batch; not normalised."""
        with parallel.activation_sharding(self.mesh, self.rules):
            model = self.model(trainable, frozen)
            hidden = model.hidden_states(batch["tokens"], batch["segment_ids"], batch["positions"])
            mask = batch["loss_mask"].astype(jnp.float32)
            ce, z, correct = chunked_cross_entropy(hidden, model.lm_head_weight(),
                                                   batch["targets"], mask, self.cfg.loss_chunk,
                                                   self.cfg.z_loss)
            total = ce + z
            metrics = {"ce_sum": ce, "tokens": mask.sum(), "correct": correct}
            if "mtp_head" in trainable or "mtp_head" in frozen:
                head = trainable.get("mtp_head", frozen.get("mtp_head"))
                t2, m2 = second_targets({"targets": batch["targets"], "loss_mask": mask})
                ce2, z2, _ = chunked_cross_entropy(hidden, head, t2, m2, self.cfg.loss_chunk,
                                                   self.cfg.z_loss)
                total = total + ce2 + z2
                metrics["mtp_ce_sum"] = ce2
        return total, metrics

    def grads(self, trainable, frozen, batch):
        """Gradients of the mean loss over the batch, accumulated over micro-batches."""
        m = self.cfg.micro_batches
        grad_fn = jax.grad(self.summed_loss, has_aux=True)
        if m <= 1:
            g, metrics = grad_fn(trainable, frozen, batch)
        else:
            def micro(x):
                x = x.reshape(m, x.shape[0] // m, *x.shape[1:])
                if self.mesh is not None:
                    spec = parallel.logical_to_spec((None, "batch", "length"), self.rules,
                                                    self.mesh, x.shape)
                    x = jax.lax.with_sharding_constraint(
                        x, jax.sharding.NamedSharding(self.mesh, spec))
                return x

            def body(carry, mb):
                g, met = grad_fn(trainable, frozen, mb)
                return jax.tree.map(jnp.add, carry, (g, met)), None

            zeros_g = jax.tree.map(jnp.zeros_like, trainable)
            _, met_shape = jax.eval_shape(grad_fn, trainable, frozen,
                                          jax.tree.map(lambda x: x[: x.shape[0] // m], batch))
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), met_shape)
            (g, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m),
                                           jax.tree.map(micro, batch))
        n = jnp.maximum(metrics["tokens"], 1.0)
        g = jax.tree.map(lambda x: (x / n).astype(x.dtype), g)
        return g, metrics

    def train_step(self, state, frozen, batch):
        """One optimiser step. A non-finite loss or gradient leaves the state unchanged."""
        g, metrics = self.grads(state["trainable"], frozen, batch)
        n = jnp.maximum(metrics["tokens"], 1.0)
        loss = metrics["ce_sum"] / n
        grad_norm = optax.tree.norm(g)
        updates, opt_state = self.tx.update(g, state["opt_state"], state["trainable"])
        new = {"step": state["step"] + 1,
               "trainable": optax.apply_updates(state["trainable"], updates),
               "opt_state": opt_state}
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(state["step"]),
               "tokens": metrics["tokens"], "accuracy": metrics["correct"] / n,
               "finite": finite}
        if "mtp_ce_sum" in metrics:
            out["mtp_loss"] = metrics["mtp_ce_sum"] / n
        return new, out

    def eval_step(self, trainable, frozen, batch, byte_lengths=None):
        """Summed CE, trained-token count and (with a token byte-length table) the bytes those
        target tokens stand for, for bits per byte; no gradients."""
        _, metrics = self.summed_loss(trainable, frozen, batch)
        out = {"ce_sum": metrics["ce_sum"], "tokens": metrics["tokens"]}
        if byte_lengths is not None:
            out["bytes"] = (jnp.take(byte_lengths, batch["targets"]) * batch["loss_mask"]).sum()
        return out


def jit_train_step(builder: StepBuilder, state_shardings, frozen_shardings, batch_sharding
                   ) -> Callable:
    """The train step jitted with explicit shardings; the state's buffers are donated."""
    return jax.jit(builder.train_step,
                   in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
