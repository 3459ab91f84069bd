"""Model FLOPs per token and MFU.

Counting (matmuls only, 2 FLOPs per multiply-add; norms, softmax and the optimiser are ignored):

- Forward, per token: 2 x (parameters used in matmuls) — the attention and MLP projections of
  every layer and the LM head. The input embedding is a lookup (0 FLOPs). Attention scores and
  the weighted sum add 2 x 2 x t x heads x head_dim per layer for a full t x t score matrix;
  causal attention computes half of it, so 2 x t x heads x head_dim (t = sequence length; with
  a sliding window w < t, the mean attended length, w - w²/(2t), replaces t/2).
- Backward: gradients with respect to activations cost the forward FLOPs again, for every layer
  the gradient must pass through (all layers above the lowest trained parameter); gradients with
  respect to weights cost 2 x (trained matmul parameters) more. Attention has no weights: its
  backward is 2 x its forward wherever gradients pass.
- Full training therefore gives the familiar 6 x N per token (+ attention); embeddings-only
  training (LEP) computes forward (2N) + activation gradients through every layer (2N) + the LM
  head's weight gradient, i.e. about 4 x N, and is counted as such — not as 6 x N_trained.

Rematerialisation recomputes part of the forward pass; it is not counted (model FLOPs, as MFU is
usually reported). References: Kaplan et al. 2020 (6N), Chowdhery et al. 2022 (PaLM, appendix B:
MFU and attention FLOPs).
"""

from __future__ import annotations

from lepjax.models.config import ModelConfig

# Dense bf16 peak TFLOP/s per device, by `jax.devices()[0].device_kind` substring.
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}


def layer_matmul_params(c: ModelConfig) -> int:
    """Parameters of one layer used in matmuls (attention projections and MLP)."""
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    return attn + 3 * c.hidden_size * c.intermediate_size


def attention_flops_forward(c: ModelConfig, seq_len: int) -> float:
    """Forward attention-score FLOPs per token per layer, causal (and windowed)."""
    t = seq_len
    attended = t / 2 if c.sliding_window is None or c.sliding_window >= t else (
        c.sliding_window - c.sliding_window ** 2 / (2 * t))
    return 4 * attended * c.num_heads * c.head_dim


def flops_per_token(c: ModelConfig, seq_len: int, trained_layers: int | None = None,
                    lowest_trained_layer: int | None = 0, head_trained: bool = True,
                    layer_params_trained: int | None = None, backward: bool = True) -> float:
    """Training (or forward-only) FLOPs per token.

    trained_layers: layers whose weights train (default: all). lowest_trained_layer: index of
    the lowest layer gradients must reach (0 when the embeddings or layer 0 train; None when
    nothing below the LM head trains). head_trained: whether the LM head's weights train.
    layer_params_trained: override of the trained matmul parameters inside layers.
    """
    L = c.num_layers
    per_layer = layer_matmul_params(c)
    head = c.hidden_size * c.vocab_size
    attn = attention_flops_forward(c, seq_len)
    forward = 2 * (L * per_layer + head) + L * attn
    if not backward:
        return forward
    through = 0 if lowest_trained_layer is None else L - lowest_trained_layer
    act_grads = 2 * (through * per_layer + head) + through * 2 * attn
    trained = per_layer * (L if trained_layers is None else trained_layers)
    if layer_params_trained is not None:
        trained = layer_params_trained
    weight_grads = 2 * (trained + (head if head_trained else 0))
    return forward + act_grads + weight_grads


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None if unknown."""
    for key, tflops in PEAK_TFLOPS.items():
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def selection_flops_per_token(c: ModelConfig, selection: dict[str, tuple[int, ...] | None],
                              seq_len: int) -> float:
    """Training FLOPs per token for a `lepjax.train.params` selection: which layers (and whether
    the embeddings and LM head) train decides how far gradients flow and which weights get them."""
    layer_paths = {p: idx for p, idx in selection.items() if p.startswith("layers/")}
    trains_embed = "embed" in selection
    if layer_paths:
        idx_sets = [set(range(c.num_layers)) if i is None else set(i) for i in layer_paths.values()]
        lowest = min(min(s) for s in idx_sets)
        trained_layers = len(set().union(*idx_sets))
    else:
        lowest, trained_layers = None, 0
    if trains_embed:
        lowest = 0
    head = "lm_head" in selection or (c.tie_word_embeddings and trains_embed)
    return flops_per_token(c, seq_len, trained_layers=trained_layers, lowest_trained_layer=lowest,
                           head_trained=head)
