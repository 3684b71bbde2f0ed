"""The served signatures: bytes or tensors in, heat map, box and score out.

Two signatures, both `tensorflow/serving/predict`:

  serving_default   image_bytes  string  [N]         JPEG or PNG file bytes
                    wav_bytes    string  [N]         WAV file bytes
  serving_tensors   image        float32 [N, S, S, 3] RGB in [0, 1]
                    waveform     float32 [N, T]      mono at config.sample_rate

  outputs (both)    heatmap      float32 [N, H, H]   attention, bilinear to H x H
                                                      (H = heatmap_size, default
                                                      config.eval_size), min-max
                                                      normalised to [0, 1]
                    box          float32 [N, 4]      [x1, y1, x2, y2] in [0, 1]
                    score        float32 [N]         max cosine: sound-image match

Everything between the bytes and the outputs is core TensorFlow ops (TF Serving loads no
custom ops): `image_decode`, `wav_decode` and `heatmap_boxes`.  Invalid input fails the
whole request with an InvalidArgument error (HTTP 400 from TF Serving) whose message names
the input and instance, e.g. "image_bytes[2]: image is 10000x10000 pixels (width x height);
each side must lie in [1, 4096]".  `serving_tensors` rejects NaN or infinite values and
clips images to [0, 1].
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from soundloc_tf.config import Config
from soundloc_tf.inference.heatmap_boxes import heatmaps_and_boxes
from soundloc_tf.inference.graph_checks import check
from soundloc_tf.inference.image_decode import decode_image
from soundloc_tf.inference.wav_decode import decode_sound

BYTES_SIGNATURE = "serving_default"
TENSORS_SIGNATURE = "serving_tensors"
OUTPUT_KEYS = ("heatmap", "box", "score")


def _same_batch(a: tf.Tensor, b: tf.Tensor, a_name: str, b_name: str) -> list[tf.Operation]:
    n, m = tf.shape(a)[0], tf.shape(b)[0]
    return [check(n >= 1, f"{a_name} is empty; send at least one instance"),
            check(tf.equal(n, m), f"{a_name} has {{}} instances but {b_name} has {{}}; "
                  "they must pair up", n, m)]


def decode_batch(image_bytes: tf.Tensor, wav_bytes: tf.Tensor,
                 config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """string [N] x 2 -> images [N, S, S, 3] and waveforms [N, num_samples]."""
    with tf.control_dependencies(_same_batch(image_bytes, wav_bytes, "image_bytes",
                                             "wav_bytes")):
        index = tf.range(tf.shape(image_bytes)[0])

    def one(args):
        image, wav, i = args
        return (decode_image(image, config.image_size, "image_bytes", i),
                decode_sound(wav, config, "wav_bytes", i))

    s, t = config.image_size, config.num_samples
    return tf.map_fn(one, (image_bytes, wav_bytes, index),
                     fn_output_signature=(tf.TensorSpec([s, s, 3], tf.float32),
                                          tf.TensorSpec([t], tf.float32)))


def localize_fn(model: keras.Model, config: Config,
                heatmap_size: int | None = None) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """(images, waveforms) -> {"heatmap", "box", "score"}: the signatures' shared tail."""
    size = heatmap_size or config.eval_size

    def run(images: tf.Tensor, waveforms: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model({"image": images, "waveform": waveforms}, training=False)
        heatmap, box = heatmaps_and_boxes(outputs["attention"], size, config.ciou_threshold)
        return {"heatmap": heatmap, "box": box, "score": outputs["score"]}

    return run


def serving_functions(model: keras.Model, config: Config,
                      heatmap_size: int | None = None) -> dict[str, tuple[Callable, list]]:
    """Signature name -> (function, input signature) for both signatures."""
    run = localize_fn(model, config, heatmap_size)
    s, t = config.image_size, config.num_samples

    def serving_default(image_bytes, wav_bytes):
        images, waveforms = decode_batch(image_bytes, wav_bytes, config)
        return run(images, waveforms)

    def serving_tensors(image, waveform):
        checks = _same_batch(image, waveform, "image", "waveform") + [
            check(tf.reduce_all(tf.math.is_finite(image)), "image holds NaN or infinite values"),
            check(tf.reduce_all(tf.math.is_finite(waveform)),
                  "waveform holds NaN or infinite values")]
        with tf.control_dependencies(checks):
            image = tf.clip_by_value(image, 0.0, 1.0)
            waveform = tf.identity(waveform)
        return run(image, waveform)

    return {
        BYTES_SIGNATURE: (serving_default, [tf.TensorSpec([None], tf.string, "image_bytes"),
                                            tf.TensorSpec([None], tf.string, "wav_bytes")]),
        TENSORS_SIGNATURE: (serving_tensors, [tf.TensorSpec([None, s, s, 3], tf.float32, "image"),
                                              tf.TensorSpec([None, t], tf.float32, "waveform")]),
    }


def signature_summary(config: Config, heatmap_size: int | None = None) -> dict:
    """Names, dtypes and shapes of both signatures (-1: any batch size)."""
    h = heatmap_size or config.eval_size
    s, t = config.image_size, config.num_samples
    outputs = {"heatmap": ["float32", [-1, h, h]], "box": ["float32", [-1, 4]],
               "score": ["float32", [-1]]}
    return {
        BYTES_SIGNATURE: {"inputs": {"image_bytes": ["string", [-1]],
                                     "wav_bytes": ["string", [-1]]}, "outputs": outputs},
        TENSORS_SIGNATURE: {"inputs": {"image": ["float32", [-1, s, s, 3]],
                                       "waveform": ["float32", [-1, t]]}, "outputs": outputs},
    }

