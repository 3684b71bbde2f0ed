"""Counts multiply-accumulates of a Keras model from its layers' shapes.

Why not a profiler: TF's profiler needs a frozen graph and counts ops the
CPU kernels may fuse or skip; the paper's figure (VGG16 to block5_conv3 at
320x320 = 31.32 GMAC) is a shape count, so GFLOP/s and "% of peak" here are
computed the same way: 2 FLOP per MAC of every Conv1D, Conv2D and Dense layer.
Element-wise work (bias, ReLU, pooling, normalisation) is left out; it is
under 0.5% of VGG16's MACs.
"""

from __future__ import annotations

import math

import keras


def _dims(shape) -> list[int]:
    """A Keras shape without the batch axis; every other axis must be known."""
    dims = list(shape)[1:]
    if any(d is None for d in dims):
        raise ValueError(f"count_macs needs static shapes (batch axis excepted). Received: {shape}")
    return [int(d) for d in dims]


def layer_macs(layer: keras.layers.Layer) -> int:
    """MACs of one layer for one example (0 for layers without a weight product)."""
    if isinstance(layer, keras.Model):
        return count_macs(layer)
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
            layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        out = _dims(layer.output.shape)  # [H, W, C_out] (channels_last)
        in_channels = _dims(layer.input.shape)[-1]
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1) or 1
        return math.prod(out) * kh * kw * in_channels // groups
    if isinstance(layer, keras.layers.Conv1D):  # SoundNet-8, the paper's audio tower
        out = _dims(layer.output.shape)  # [T, C_out] (channels_last)
        in_channels = _dims(layer.input.shape)[-1]
        groups = getattr(layer, "groups", 1) or 1
        return math.prod(out) * layer.kernel_size[0] * in_channels // groups
    if isinstance(layer, keras.layers.Dense):
        in_dims = _dims(layer.input.shape)
        rows = math.prod(in_dims[:-1]) if len(in_dims) > 1 else 1
        return rows * in_dims[-1] * int(layer.units)
    return 0


def count_macs(model: keras.Model) -> int:
    """MACs per example of every Conv1D, Conv2D and Dense layer, nested models included."""
    return sum(layer_macs(layer) for layer in model.layers)


def conv_macs_by_layer(model: keras.Model) -> dict[str, int]:
    """Layer name -> MACs per example, for the layers that have any (for the README table)."""
    return {layer.name: m for layer in model.layers if (m := layer_macs(layer))}


def heads_update_flops(config, batch: int) -> float:
    """FLOP per pair of one heads-only update on cached features (matrix products).

    The forward's products, and in the backward those the gradients need: every
    weight's, and the activations' back to the sound embedding; none for the cached
    map, which is an input. The attention's products count backward only when the
    loss uses them (triplet, or the supervised term).
    """
    hw, c = config.map_size ** 2, config.visual_dim
    audio, sound_hidden = config.audio_feature_dim, config.sound_hidden_dim
    visual_heads = c * config.visual_hidden_dim + config.visual_hidden_dim * audio
    triplet = config.unsupervised_loss == "triplet"
    attention_in_loss = triplet or (config.label_fraction > 0 and config.supervised_weight > 0)
    macs = 2 * audio * sound_hidden + 3 * sound_hidden * c  # sound fc1 (weights), fc2
    macs += hw * c  # |v|^2
    macs += hw * c * (2 if attention_in_loss else 1)  # v . s of the own sound
    # The attended map (sum_i alpha_i v_i) and its gradient back to the attention; the
    # visual heads' forward, weight and activation gradients.
    macs += (2 * hw * c + 3 * visual_heads) if triplet else 0
    if config.unsupervised_loss == "infonce":
        macs += 2 * batch * hw * c  # every location against every sound, and its gradient
    return 2.0 * macs
