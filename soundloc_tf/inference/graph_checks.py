"""In-graph checks and byte readers shared by the image and WAV decoders.

A failed check fails the whole request with an InvalidArgument error (HTTP 400 from TF
Serving) whose message names the input and, within a batch, the instance: `Where` builds
that prefix, e.g. "image_bytes[2]: ...".  The readers slice the file's bytes as a string
tensor, so decoding stays in core TensorFlow ops (TF Serving loads no custom ops).
"""

from __future__ import annotations

import tensorflow as tf


def check(condition: tf.Tensor, template: str, *values: tf.Tensor) -> tf.Operation:
    """An assertion whose message is `template` formatted with `values` in the graph.

    Args:
        condition: scalar bool; the assertion fails when it is False.
        template: the message, with "{}" for each of `values`.
        *values: tensors formatted into the message when it fails.
    """
    message = tf.strings.format(template, values) if values else template
    return tf.debugging.Assert(condition, [message], summarize=1)


class Where:
    """Names an input in error messages: "image_bytes[3]" inside a batch, else "image_bytes".

    Args:
        name: the signature's input name.
        index: the instance within the batch (None: not in a batch).
    """

    def __init__(self, name: str, index: tf.Tensor | None = None):
        self.template = name.replace("{", "{{").replace("}", "}}")
        self.values: tuple = ()
        if index is not None:
            self.template += "[{}]"
            self.values = (index,)

    def check(self, condition: tf.Tensor, template: str, *values: tf.Tensor) -> tf.Operation:
        """`template` follows the name, e.g. ": not a WAV file ({} bytes)"."""
        return check(condition, self.template + template, *self.values, *values)


def padded_header(contents: tf.Tensor, size: int) -> tf.Tensor:
    """The first `size` bytes, zero-padded: safe to slice however short the input is."""
    return tf.strings.join([tf.strings.substr(contents, 0, size), b"\0" * size])


def read_uint(contents: tf.Tensor, pos: tf.Tensor, size: int,
              big_endian: bool = False) -> tf.Tensor:
    """Unsigned integer of `size` bytes at byte `pos` (the caller checks the bounds)."""
    raw = tf.io.decode_raw(tf.strings.substr(contents, pos, size), tf.uint8)
    raw = tf.cast(tf.reshape(raw, [size]), tf.int64)
    order = range(size - 1, -1, -1) if big_endian else range(size)
    return tf.reduce_sum(raw * tf.constant([256 ** i for i in order], tf.int64))
