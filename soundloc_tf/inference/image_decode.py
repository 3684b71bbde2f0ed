"""Image bytes -> the model's image, in core TensorFlow ops (the served graph's decoder).

JPEG or PNG (8- or 16-bit; grayscale, palette, RGBA converted to RGB, alpha dropped; an
animated PNG gives its first frame), turned as their EXIF orientation says (JPEG APP1
"Exif", PNG eXIf).  Each side must lie in [1, MAX_IMAGE_SIDE]; the size is read from the
header before decoding, so a 10,000 x 10,000 image is rejected without allocating it.  The
image is resized (bilinear, antialiased) to config.image_size square; the served box is
normalised, so it applies to the original image unchanged.  A corrupt body behind a valid
header fails in the decoder, whose message does not name the instance.
"""

from __future__ import annotations

import tensorflow as tf

from soundloc_tf.inference.graph_checks import Where, padded_header, read_uint

MAX_IMAGE_SIDE = 4096
# The EXIF search reads at most this many JPEG segments or PNG chunks, and IFD entries.
MAX_IMAGE_SEGMENTS = 64
MAX_EXIF_ENTRIES = 256

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _image_shape(contents: tf.Tensor, is_png: tf.Tensor, where: Where) -> tf.Tensor:
    """[height, width] from the file header, without decoding the pixels."""
    length = tf.cast(tf.strings.length(contents), tf.int64)

    def png_shape():
        header = padded_header(contents, 24)
        ok = (length >= 24) & tf.equal(tf.strings.substr(header, 12, 4), "IHDR")
        with tf.control_dependencies([where.check(ok, ": PNG header is truncated or has no "
                                                          "IHDR chunk")]):
            return tf.stack([read_uint(header, tf.constant(20, tf.int64), 4, True),
                             read_uint(header, tf.constant(16, tf.int64), 4, True)])

    def jpeg_shape():
        return tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.int64)

    return tf.cond(is_png, png_shape, jpeg_shape)


def decode_image(contents: tf.Tensor, size: int, name: str = "image_bytes",
                 index: tf.Tensor | None = None) -> tf.Tensor:
    """One JPEG/PNG file's bytes -> float32 [size, size, 3] RGB in [0, 1].

    Error messages name the input `name` and, within a batch, its `index`.
    """
    where = Where(name, index)
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.strings.length(contents)
    header = padded_header(contents, len(_PNG_MAGIC))
    is_png = tf.equal(tf.strings.substr(header, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(header, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    known = where.check(is_png | is_jpeg, ": not a JPEG or PNG image ({} bytes)", length)
    with tf.control_dependencies([known]):
        shape = _image_shape(contents, is_png, where)
    height, width = shape[0], shape[1]
    fits = ((height >= 1) & (width >= 1) & (height <= MAX_IMAGE_SIDE)
            & (width <= MAX_IMAGE_SIDE))
    check_size = where.check(fits, ": image is {}x{} pixels (width x height); each side must "
                             f"lie in [1, {MAX_IMAGE_SIDE}]", width, height)
    with tf.control_dependencies([check_size]):
        image = tf.io.decode_image(contents, channels=3, dtype=tf.float32,
                                   expand_animations=False)
    orientation = tf.cond(is_png, lambda: _png_orientation(contents, length),
                          lambda: _jpeg_orientation(contents, length))
    return resize_image(apply_orientation(image, orientation), size)


# ---------------------------------------------------------------------------
# EXIF orientation: cameras store pixels as the sensor saw them and say in EXIF
# how to turn them; browsers and Pillow's exif_transpose show the turned picture.


def _uint_at(contents: tf.Tensor, length: tf.Tensor, pos: tf.Tensor, size: int,
             big_endian: tf.Tensor) -> tf.Tensor:
    """Unsigned integer of `size` bytes at `pos` in either byte order; 0 when out of bounds."""
    pos = tf.cast(pos, tf.int64)
    inside = (pos >= 0) & (pos + size <= length)
    padded = tf.strings.join([contents, b"\0" * size])
    safe = tf.clip_by_value(pos, 0, length)
    value = tf.where(big_endian, read_uint(padded, safe, size, True),
                     read_uint(padded, safe, size, False))
    return tf.where(inside, value, tf.zeros_like(value))


def _tiff_orientation(contents: tf.Tensor, length: tf.Tensor, tiff: tf.Tensor) -> tf.Tensor:
    """The Orientation tag (0x0112) of IFD0 of the TIFF block at `tiff`; 1 when absent or bad."""
    order = tf.strings.substr(contents, tf.minimum(tiff, length), 2)
    big = tf.equal(order, "MM")
    ifd = tiff + _uint_at(contents, length, tiff + 4, 4, big)
    count = tf.minimum(_uint_at(contents, length, ifd, 2, big), MAX_EXIF_ENTRIES)

    def keep_going(i, found):
        return (i < count) & (found < 0)

    def next_entry(i, found):
        entry = ifd + 2 + 12 * i
        tag = _uint_at(contents, length, entry, 2, big)
        value = _uint_at(contents, length, entry + 8, 2, big)
        return i + 1, tf.where(tf.equal(tag, 0x0112), value, found)

    _, found = tf.while_loop(keep_going, next_entry,
                             (tf.constant(0, tf.int64), tf.constant(-1, tf.int64)))
    known = (tf.equal(order, "MM") | tf.equal(order, "II")) & (found >= 1) & (found <= 8)
    return tf.where(known, found, tf.constant(1, tf.int64))


def _jpeg_orientation(contents: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """EXIF orientation of a JPEG: its APP1 "Exif" segment, searched up to the scan."""
    length = tf.cast(length, tf.int64)
    no_tiff = tf.constant(-1, tf.int64)

    def keep_going(pos, tiff):
        return (tiff < 0) & (pos + 10 <= length)

    def next_segment(pos, tiff):
        marker = _uint_at(contents, length, pos, 2, tf.constant(True))
        size = _uint_at(contents, length, pos + 2, 2, tf.constant(True))
        is_exif = tf.equal(marker, 0xFFE1) & tf.equal(
            tf.strings.substr(contents, tf.minimum(pos + 4, length), 6), b"Exif\0\0")
        # Not a marker, or the start of the scan: no EXIF before the pixels.
        stop = tf.not_equal(marker // 256, 0xFF) | tf.equal(marker, 0xFFDA) | (size < 2)
        tiff = tf.where(is_exif, pos + 10, tiff)
        return tf.where(stop & ~is_exif, length, pos + 2 + size), tiff

    _, tiff = tf.while_loop(keep_going, next_segment, (tf.constant(2, tf.int64), no_tiff),
                            maximum_iterations=MAX_IMAGE_SEGMENTS)
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(contents, length, tiff),
                   lambda: tf.constant(1, tf.int64))


def _png_orientation(contents: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """EXIF orientation of a PNG: its eXIf chunk, searched up to the first IDAT."""
    length = tf.cast(length, tf.int64)
    no_tiff = tf.constant(-1, tf.int64)

    def keep_going(pos, tiff):
        return (tiff < 0) & (pos + 12 <= length)

    def next_chunk(pos, tiff):
        size = _uint_at(contents, length, pos, 4, tf.constant(True))
        kind = tf.strings.substr(contents, tf.minimum(pos + 4, length), 4)
        tiff = tf.where(tf.equal(kind, "eXIf"), pos + 8, tiff)
        return tf.where(tf.equal(kind, "IDAT"), length, pos + 12 + size), tiff

    _, tiff = tf.while_loop(keep_going, next_chunk, (tf.constant(8, tf.int64), no_tiff),
                            maximum_iterations=MAX_IMAGE_SEGMENTS)
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(contents, length, tiff),
                   lambda: tf.constant(1, tf.int64))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """[H, W, C] as stored -> as displayed, for EXIF orientation 1..8 (others: unchanged)."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,                                   # 1: as stored
        lambda: tf.image.flip_left_right(image),         # 2: mirrored
        lambda: tf.image.rot90(image, 2),                # 3: upside down
        lambda: tf.image.flip_up_down(image),            # 4: mirrored, upside down
        transposed,                                      # 5: mirrored, turned
        lambda: tf.image.rot90(image, 3),                # 6: turned: show it 90 deg clockwise
        lambda: tf.image.rot90(transposed(), 2),         # 7: mirrored, turned the other way
        lambda: tf.image.rot90(image, 1),                # 8: show it 90 deg anticlockwise
    ]
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index >= 0) & (index < 8), index, 0)
    return tf.switch_case(index, branches)


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """float RGB [H, W, 3] in [0, 1] -> [size, size, 3]: bilinear, antialiased when shrinking."""
    image = tf.image.resize(image[None], [size, size], method="bilinear", antialias=True)[0]
    image = tf.clip_by_value(image, 0.0, 1.0)
    image.set_shape([size, size, 3])
    return image

