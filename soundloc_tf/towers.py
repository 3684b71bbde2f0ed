"""The tower table: one entry per image and audio tower, holding the facts about it.

A tower's facts (its input sample rate, its shortest clip, its features and their widths,
where its converted weights are written, how much it downsamples an image) have one home,
here. `soundloc_tf.config` validates a `Config` against this table and computes the map
geometry from it; `soundloc_tf.modeling` builds the towers from the same numbers. The
table imports nothing of the project (floor 0), so both can read it.

The numbers a network's layers also determine (SoundNet-8's and YAMNet's shortest clip,
VGG16's downsampling) are stated here and checked against the built models in
tests/test_towers.py.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

# Every VGG-style block but the last ends in a 2x2 max-pool of stride 2, so a tower of
# B blocks downsamples the image by POOL_STRIDE ** (B - 1).
POOL_STRIDE = 2
# Convolutions per block of the tiny VGG-style tower (whose widths come from the config).
TINY_VGG_CONVS = 2
# VGG16 up to block5_conv3, (width, convolutions) per block: four pools before block5_conv3
# give the paper's 20x20x512 map at 320x320.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# SoundNet-8 (Aytar et al. 2016): 22,050 Hz and at least one conv8 step (about 9.5 s,
# soundnet.min_samples()); conv8's heads give 1,000 ImageNet objects (the paper's feature)
# and 401 Places scenes. tools/fetch_weights.py writes SOUNDNET8_WEIGHTS.
SOUNDNET8_SAMPLE_RATE = 22050
SOUNDNET8_MIN_SAMPLES = 209374
SOUNDNET8_OBJECT_CLASSES = 1000
SOUNDNET8_SCENE_CLASSES = 401
SOUNDNET8_WEIGHTS = "~/.keras/models/soundnet8.weights.h5"
# YAMNet (AudioSet): 16 kHz and at least one 0.96-s patch (yamnet.min_samples()); a
# 1,024-d embedding and 521 AudioSet classes. `tools/fetch_weights.py --what=yamnet` writes
# YAMNET_WEIGHTS.
YAMNET_SAMPLE_RATE = 16000
YAMNET_MIN_SAMPLES = 15600
YAMNET_EMBEDDING_DIM = 1024
YAMNET_NUM_CLASSES = 521
YAMNET_WEIGHTS = "~/.keras/models/yamnet.weights.h5"

# `Config.audio_feature` names an output of the audio tower; "default" is the tower's own,
# the first entry of its `features`.
DEFAULT_AUDIO_FEATURE = "default"


@dataclasses.dataclass(frozen=True)
class ImageTower:
    """What the rest of the code needs to know about one image tower.

    Args:
      name: the `Config.image_tower` value.
      blocks: (width, convolutions) of each VGG-style block; None where the widths come
        from `Config.tiny_image_widths`, TINY_VGG_CONVS convolutions each.
      normalization: the input convention of its weights, "caffe" (BGR, 0..255,
        mean-subtracted: Keras's VGG16 ImageNet weights) or "torch" (RGB standardised
        with ImageNet statistics: towers trained from scratch here).
      pretrained: whether `Config.image_weights` other than "none" apply to it.
    """

    name: str
    blocks: tuple[tuple[int, int], ...] | None
    normalization: str
    pretrained: bool

    def block_layout(self, tiny_widths: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(width, convolutions) per block.

        Args:
          tiny_widths: `Config.tiny_image_widths`, used only by the tiny tower.
        """
        if self.blocks is not None:
            return self.blocks
        return tuple((width, TINY_VGG_CONVS) for width in tiny_widths)

    def downsampling(self, tiny_widths: tuple[int, ...]) -> int:
        """Image side / map side: one pool after every block but the last.

        Args:
          tiny_widths: `Config.tiny_image_widths`, used only by the tiny tower.
        """
        return POOL_STRIDE ** (len(self.block_layout(tiny_widths)) - 1)

    def channels(self, tiny_widths: tuple[int, ...]) -> int:
        """Channels of the visual map: the last block's width.

        Args:
          tiny_widths: `Config.tiny_image_widths`, used only by the tiny tower.
        """
        return self.block_layout(tiny_widths)[-1][0]


@dataclasses.dataclass(frozen=True)
class AudioTower:
    """What the rest of the code needs to know about one audio tower.

    Args:
      name: the `Config.audio_tower` value.
      features: the outputs `Config.audio_feature` may pick, in order (the first is the
        tower's own), each with its width; None where `Config.audio_feature_dim` sets it.
      sample_rate: the input rate a pretrained tower was trained at; None where
        `Config.sample_rate` is free.
      min_samples: the shortest clip the tower accepts; None where only the STFT window
        bounds it.
      weights: where tools/fetch_weights.py writes its converted weights; None for a tower
        without pretrained weights.
    """

    name: str
    features: Mapping[str, int | None]
    sample_rate: int | None = None
    min_samples: int | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        # The table is shared by every module: a read-only view keeps it one source.
        object.__setattr__(self, "features", types.MappingProxyType(dict(self.features)))

    @property
    def pretrained(self) -> bool:
        """Whether `Config.audio_weights` other than "none" apply to it."""
        return self.weights is not None

    @property
    def default_feature(self) -> str:
        """The tower's own feature, which `DEFAULT_AUDIO_FEATURE` stands for."""
        return next(iter(self.features))


IMAGE = {tower.name: tower for tower in (
    ImageTower("vgg16", VGG16_BLOCKS, "caffe", pretrained=True),
    ImageTower("tiny_vgg", None, "torch", pretrained=False),
)}

AUDIO = {tower.name: tower for tower in (
    # The in-graph log-mel tower: only its learned feature, of width audio_feature_dim.
    AudioTower("logmel", {"learned": None}),
    # class_* / scene_*: the object / Places head over time, the mean of the logits or of
    # the softmax of every conv8 step (each step was trained by KL to a softmax teacher).
    AudioTower("soundnet8",
               {"class_logits": SOUNDNET8_OBJECT_CLASSES,
                "class_probs": SOUNDNET8_OBJECT_CLASSES,
                "scene_logits": SOUNDNET8_SCENE_CLASSES,
                "scene_probs": SOUNDNET8_SCENE_CLASSES},
               SOUNDNET8_SAMPLE_RATE, SOUNDNET8_MIN_SAMPLES, SOUNDNET8_WEIGHTS),
    # embedding: the patches' mean; class_logits / class_probs: the 521 AudioSet logits
    # averaged over the patches, or the mean of each patch's sigmoid scores (YAMNet is
    # multi-label; its own demo averages the scores, not the logits).
    AudioTower("yamnet",
               {"embedding": YAMNET_EMBEDDING_DIM, "class_logits": YAMNET_NUM_CLASSES,
                "class_probs": YAMNET_NUM_CLASSES},
               YAMNET_SAMPLE_RATE, YAMNET_MIN_SAMPLES, YAMNET_WEIGHTS),
)}
