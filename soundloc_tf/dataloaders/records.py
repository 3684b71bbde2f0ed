"""The one on-disk format: sharded TFRecords plus a manifest with checksums.

Every importer writes, and training and evaluation read, this format, so the
model code only ever sees `data.element_spec(config)`.

Layout of a record directory:

  manifest.json                    counts, per-shard sha256, source, feature parameters
  <prefix>-00000-of-00004.tfrecord ...

One tf.train.Example per sample:

  image         bytes    the encoded image (JPEG or PNG, as imported: no re-encoding loss)
  audio         bytes    mono PCM at the manifest's sample_rate: little-endian int16
                         (manifest audio_dtype "int16", 2 bytes a sample) or float32
  audio_scale   float    int16 only: waveform = pcm / 32767 * audio_scale (scale >= the peak)
  sample_rate   int64    the audio's rate (equal to the manifest's)
  boxes         float[]  4 per box: normalised x1, y1, x2, y2 in the image
  box_annotator int64[]  the annotator (0, 1, 2, ...) of each box
  labeled       int64    1 if training may use the boxes
  class_id      int64    the sounding class, -1 when unknown
  id            bytes    unique within the directory

Shards are written to a temporary name and renamed when complete, and the
manifest is written last (also atomically), so a directory with a manifest is
a complete one.  `read_records` checks every shard's size and sha256 against
the manifest before reading and refuses a corrupted or truncated shard.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import io
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from soundloc_tf.dataloaders import data
from soundloc_tf.config import Config

FORMAT_NAME = "soundloc-records"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AUDIO_DTYPES = ("int16", "float32")
# Random resized crop when training: fraction of the image area and aspect range.
CROP_AREA = (0.5, 1.0)
CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)
# A box keeps this fraction of its area inside the crop or is dropped.
MIN_BOX_VISIBLE = 0.25
SHUFFLE_BUFFER = 2048

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "audio": tf.io.FixedLenFeature([], tf.string),
    "audio_scale": tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
    "sample_rate": tf.io.FixedLenFeature([], tf.int64),
    "boxes": tf.io.VarLenFeature(tf.float32),
    "box_annotator": tf.io.VarLenFeature(tf.int64),
    "labeled": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "class_id": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "id": tf.io.FixedLenFeature([], tf.string),
}


# ---------------------------------------------------------------------------
# Writing.


def encode_image(image: Any, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """An HxWx3 array (uint8, or float in [0, 1]) or already-encoded bytes -> encoded bytes."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be [height, width, 3]. Received: shape={array.shape}")
    out = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(array).save(out, format="JPEG", quality=quality)
    elif fmt == "png":
        Image.fromarray(array).save(out, format="PNG")
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png'. Received: fmt={fmt!r}")
    return out.getvalue()


def normalize_boxes(boxes: Any) -> tuple[list[float], list[int]]:
    """Boxes in one of the accepted shapes -> (flat coordinates, annotator per box).

    Accepted: an array [annotators, boxes, 4] with all-zero rows as padding
    (the element-spec layout), or a list with one list of [x1, y1, x2, y2]
    per annotator.  Coordinates must be normalised with x1 < x2, y1 < y2.
    """
    flat, owners = [], []
    if boxes is None:
        return flat, owners
    for annotator, annotator_boxes in enumerate(boxes):
        for box in annotator_boxes:
            box = [float(v) for v in box]
            if len(box) != 4:
                raise ValueError(f"a box has 4 numbers x1, y1, x2, y2. Received: box={box}")
            if not any(box):
                continue  # padding
            x1, y1, x2, y2 = box
            if not (all(np.isfinite(box)) and -1e-6 <= x1 < x2 <= 1 + 1e-6
                    and -1e-6 <= y1 < y2 <= 1 + 1e-6):
                raise ValueError("box coordinates must be normalised with x1 < x2 and y1 < y2. "
                                 f"Received: box={box}")
            flat.extend(float(np.clip(v, 0.0, 1.0)) for v in box)
            owners.append(annotator)
    return flat, owners


def encode_audio(waveform: np.ndarray, dtype: str) -> tuple[bytes, float]:
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if dtype == "float32":
        return waveform.astype("<f4").tobytes(), 1.0
    scale = max(float(np.max(np.abs(waveform), initial=0.0)), 1.0)
    pcm = np.round(waveform / scale * 32767.0).astype("<i2")
    return pcm.tobytes(), scale


def make_example(sample: Mapping[str, Any], audio_dtype: str = "int16",
                 image_format: str = "jpeg") -> tf.train.Example:
    """One sample dict -> tf.train.Example.

    Keys: image (encoded bytes or an array), waveform (float array),
    sample_rate, boxes (see `normalize_boxes`; optional), labeled (default:
    whether there are boxes), class_id (default -1), id.
    """
    missing = {"image", "waveform", "sample_rate", "id"} - set(sample)
    if missing:
        raise ValueError(f"a sample needs the keys image, waveform, sample_rate, id. "
                         f"Received: missing {sorted(missing)} (id={sample.get('id')!r})")
    flat, owners = normalize_boxes(sample.get("boxes"))
    audio, scale = encode_audio(sample["waveform"], audio_dtype)
    labeled = bool(sample.get("labeled", bool(owners)))
    feature = {
        "image": _bytes(encode_image(sample["image"], image_format)),
        "audio": _bytes(audio),
        "audio_scale": tf.train.Feature(float_list=tf.train.FloatList(value=[scale])),
        "sample_rate": _int64([int(sample["sample_rate"])]),
        "boxes": tf.train.Feature(float_list=tf.train.FloatList(value=flat)),
        "box_annotator": _int64(owners),
        "labeled": _int64([int(labeled)]),
        "class_id": _int64([int(sample.get("class_id", -1))]),
        "id": _bytes(str(sample["id"]).encode("utf-8")),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def sha256_of(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def write_shards(examples: Iterable[bytes], directory: str, prefix: str,
                 samples_per_shard: int) -> list[dict[str, Any]]:
    """Writes serialized examples as `<prefix>-NNNNN-of-NNNNN.tfrecord` shards.

    Shards are written to temporary files and renamed only once every example
    is in, so an interrupted or failed write (a full disk, an exception raised
    by `examples`) leaves no shard behind. Returns one manifest entry per shard
    (file, count, bytes, sha256); an empty `examples` gives [].
    """
    temps: list[tuple[str, int]] = []
    writer, in_shard, temp = None, 0, None
    try:
        for example in examples:
            if writer is None:
                fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".tfrecord", dir=directory)
                os.close(fd)
                writer, in_shard = tf.io.TFRecordWriter(temp), 0
            writer.write(example)
            in_shard += 1
            if in_shard == samples_per_shard:
                writer.close()
                temps.append((temp, in_shard))
                writer, temp = None, None
        if writer is not None:
            writer.close()
            temps.append((temp, in_shard))
            writer, temp = None, None
        entries = []
        for i, (path, n) in enumerate(temps):
            name = f"{prefix}-{i:05d}-of-{len(temps):05d}.tfrecord"
            final = os.path.join(directory, name)
            os.replace(path, final)
            entries.append({"file": name, "count": n, "bytes": os.path.getsize(final),
                            "sha256": sha256_of(final)})
        temps = []
        return entries
    except tf.errors.OpError as error:  # a full disk is ResourceExhaustedError in TF
        raise OSError(f"cannot write the records ({error.message.strip().splitlines()[0]}); "
                      f"nothing was kept. Received: directory={directory!r}") from None
    finally:
        if writer is not None:
            try:
                writer.close()
            except tf.errors.OpError:  # the same full disk; the file is removed below
                pass
        for path in [t for t, _ in temps] + ([temp] if temp else []):
            if path and os.path.exists(path):
                os.remove(path)


@dataclasses.dataclass
class WriteSummary:
    directory: str
    count: int
    labeled: int
    shards: list[str]
    bytes: int
    seconds: float


def write_records(samples: Iterable[Mapping[str, Any]], directory: str, *, sample_rate: int,
                  clip_seconds: float, source: str, samples_per_shard: int = 1000,
                  audio_dtype: str = "int16", image_format: str = "jpeg", prefix: str = "data",
                  extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
                  ) -> WriteSummary:
    """Writes samples into `directory` as sharded TFRecords plus manifest.json.

    Every sample's waveform must be at `sample_rate` (importers resample);
    ids must be unique.  The directory must not hold a manifest already.
    `extra` is stored in the manifest as is (e.g. class names, import summary);
    a callable is called once every sample is written (an import's report).
    Images given as arrays are encoded as `image_format` ("jpeg" or "png");
    encoded bytes are stored unchanged.
    """
    if audio_dtype not in AUDIO_DTYPES:
        raise ValueError(f"audio_dtype must be one of {AUDIO_DTYPES}. Received: "
                         f"audio_dtype={audio_dtype!r}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1. Received: "
                         f"samples_per_shard={samples_per_shard}")
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise ValueError(f"the directory already holds records; choose an empty one. "
                         f"Received: directory={directory!r}")
    started = time.perf_counter()
    seen: set[str] = set()
    labeled = 0

    def serialized() -> Iterator[bytes]:
        nonlocal labeled
        for sample in samples:
            sid = str(sample.get("id"))
            if sid in seen:
                raise ValueError(f"duplicate sample id. Received: id={sid!r}")
            seen.add(sid)
            rate = int(sample.get("sample_rate", -1))
            if rate != sample_rate:
                raise ValueError(f"every waveform must be at the directory's sample rate "
                                 f"{sample_rate}. Received: sample_rate={rate} (id={sid!r})")
            example = make_example(sample, audio_dtype, image_format)
            labeled += int(example.features.feature["labeled"].int64_list.value[0])
            yield example.SerializeToString()

    shards = write_shards(serialized(), directory, prefix, samples_per_shard)
    if not shards:
        raise ValueError(f"no samples to write. Received: directory={directory!r}")
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": source,
        "count": len(seen),
        "labeled": labeled,
        "features": {"sample_rate": int(sample_rate), "clip_seconds": float(clip_seconds),
                     "audio_dtype": audio_dtype, "boxes": "normalised x1,y1,x2,y2 per annotator"},
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"extra": dict(extra() if callable(extra) else extra)} if extra else {}),
    }
    _atomic_write_text(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=1))
    return WriteSummary(directory, len(seen), labeled, [s["file"] for s in shards],
                        sum(s["bytes"] for s in shards), time.perf_counter() - started)


# ---------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class RecordSet:
    """The shards one call reads, with their manifest."""

    directory: str
    manifest: dict
    files: tuple[str, ...]

    @property
    def count(self) -> int:
        names = {os.path.basename(f) for f in self.files}
        return sum(s["count"] for s in self.manifest["shards"] if s["file"] in names)

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["features"]["sample_rate"])


def load_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"no {MANIFEST} beside the records (an import that did not finish, "
                         f"or not a record directory). Received: {directory!r}") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable {MANIFEST}. Received: {path!r} ({error})") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT_NAME} v{FORMAT_VERSION} manifest. Received: {path!r} "
                         f"(format={manifest.get('format')!r}, "
                         f"version={manifest.get('version')!r})")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{MANIFEST} lists no shards. Received: {path!r}")
    for entry in shards:
        name = entry.get("file") if isinstance(entry, dict) else None
        # A shard is a file beside its manifest: a path elsewhere (`../other/x`) would read
        # records the manifest's checksums do not vouch for.
        if (not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name
                or "\\" in name or not isinstance(entry.get("sha256"), str)):
            raise ValueError(f"{MANIFEST} names a shard that is not a file beside it, or without "
                             f"its sha256. Received: {str(entry)[:200]} in {path!r}")
    return manifest


def resolve(path_or_pattern: str) -> RecordSet:
    """A record directory, or a glob of shard files in one directory -> RecordSet."""
    if os.path.isdir(path_or_pattern):
        directory = path_or_pattern
        manifest = load_manifest(directory)
        files = tuple(os.path.join(directory, s["file"]) for s in manifest["shards"])
        return RecordSet(directory, manifest, files)
    matches = sorted(glob.glob(path_or_pattern))
    if not matches:
        raise ValueError(f"no record files match. Received: path_or_pattern={path_or_pattern!r}")
    directories = {os.path.dirname(os.path.abspath(m)) for m in matches}
    if len(directories) != 1:
        raise ValueError(f"a pattern must match shards of one directory (one manifest). "
                         f"Received: {sorted(directories)}")
    directory = directories.pop()
    manifest = load_manifest(directory)
    listed = {s["file"] for s in manifest["shards"]}
    unknown = [os.path.basename(m) for m in matches if os.path.basename(m) not in listed]
    if unknown:
        raise ValueError(f"files not listed in {MANIFEST} (a stray or half-written shard?). "
                         f"Received: {unknown[:5]}")
    return RecordSet(directory, manifest, tuple(matches))


def verify_shards(records: RecordSet) -> None:
    """Checks each shard's size and sha256; a ValueError names the first bad one."""
    by_name = {s["file"]: s for s in records.manifest["shards"]}
    for path in records.files:
        entry = by_name[os.path.basename(path)]
        if not os.path.isfile(path):
            raise ValueError(f"shard missing. Received: {path!r}")
        size = os.path.getsize(path)
        if "bytes" in entry and size != entry["bytes"]:
            raise ValueError(f"corrupted shard (size {size} bytes, manifest says "
                             f"{entry['bytes']}); re-import or restore it. Received: {path!r}")
        if sha256_of(path) != entry["sha256"]:
            raise ValueError(f"corrupted shard (sha256 differs from the manifest); re-import or "
                             f"restore it. Received: {path!r}")


def _parse(serialized: tf.Tensor, audio_dtype: str) -> dict[str, tf.Tensor]:
    f = tf.io.parse_single_example(serialized, _FEATURES)
    if audio_dtype == "int16":
        pcm = tf.io.decode_raw(f["audio"], tf.int16, little_endian=True)
        waveform = tf.cast(pcm, tf.float32) * (f["audio_scale"] / 32767.0)
    else:
        waveform = tf.io.decode_raw(f["audio"], tf.float32, little_endian=True)
    return {
        "image_bytes": f["image"],
        "waveform": waveform,
        "boxes_flat": tf.reshape(tf.sparse.to_dense(f["boxes"]), [-1, 4]),
        "box_annotator": tf.sparse.to_dense(f["box_annotator"]),
        "labeled": f["labeled"] > 0,
        "class_id": tf.cast(f["class_id"], tf.int32),
        "id": f["id"],
    }


def pack_boxes(boxes: tf.Tensor, annotator: tf.Tensor) -> tf.Tensor:
    """Boxes [K, 4] with annotator [K] -> [MAX_ANNOTATORS, MAX_BOXES, 4], zero-padded.

    Boxes of annotators beyond MAX_ANNOTATORS, and an annotator's boxes beyond
    MAX_BOXES, are dropped (the import summary reports how many).
    """
    annotator = tf.cast(annotator, tf.int32)
    one_hot = tf.one_hot(annotator, data.MAX_ANNOTATORS, dtype=tf.int32)  # [K, A]
    # The k-th box of its annotator.
    rank = tf.reduce_sum((tf.cumsum(one_hot, axis=0) - 1) * one_hot, axis=1)
    keep = (annotator < data.MAX_ANNOTATORS) & (rank < data.MAX_BOXES)
    indices = tf.stack([tf.boolean_mask(annotator, keep), tf.boolean_mask(rank, keep)], axis=1)
    return tf.scatter_nd(indices, tf.boolean_mask(boxes, keep),
                         [data.MAX_ANNOTATORS, data.MAX_BOXES, 4])


def _crop_boxes(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """Boxes [K, 4] in the image -> the same boxes in the crop `window` (x1, y1, x2, y2).

    A box that keeps less than MIN_BOX_VISIBLE of its area is removed.
    """
    x1, y1, x2, y2 = tf.unstack(window)
    scale = tf.stack([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    moved = (boxes - tf.stack([x1, y1, x1, y1])) / scale
    clipped = tf.clip_by_value(moved, 0.0, 1.0)
    area = lambda b: tf.maximum(b[:, 2] - b[:, 0], 0.0) * tf.maximum(b[:, 3] - b[:, 1], 0.0)
    visible = area(clipped) >= MIN_BOX_VISIBLE * area(moved)
    visible &= area(clipped) > 0
    return clipped, visible


def _decode(element: dict, config: Config, training: bool, source_rate: int,
            key: tf.Tensor | None) -> dict[str, tf.Tensor]:
    size, n = config.image_size, config.num_samples
    image = tf.io.decode_image(element["image_bytes"], channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    boxes, annotator = element["boxes_flat"], element["box_annotator"]
    waveform = element["waveform"]
    if source_rate != config.sample_rate:
        waveform = _resample(waveform, source_rate, config.sample_rate)
    length = tf.shape(waveform)[0]
    if training:
        keys = tf.random.experimental.stateless_split(key, 4)
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=keys[0],
            min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT, area_range=CROP_AREA,
            max_attempts=20, use_image_if_no_bounding_boxes=True)
        full_hw = tf.cast(tf.shape(image)[:2], tf.float32)
        image = tf.slice(image, begin, crop_size)
        top, left = tf.cast(begin[0], tf.float32), tf.cast(begin[1], tf.float32)
        crop_hw = tf.cast(crop_size[:2], tf.float32)
        window = tf.stack([left / full_hw[1], top / full_hw[0],
                           (left + crop_hw[1]) / full_hw[1], (top + crop_hw[0]) / full_hw[0]])
        boxes, visible = _crop_boxes(boxes, window)
        boxes, annotator = tf.boolean_mask(boxes, visible), tf.boolean_mask(annotator, visible)
        flip = tf.random.stateless_uniform([], keys[1]) < 0.5
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
        boxes = tf.cond(flip, lambda: tf.stack([1.0 - boxes[:, 2], boxes[:, 1],
                                                1.0 - boxes[:, 0], boxes[:, 3]], axis=1),
                        lambda: boxes)
        extra = tf.maximum(length - n, 0)
        offset = tf.random.stateless_uniform([], keys[2], 0, extra + 1, dtype=tf.int32)
    else:
        offset = tf.maximum(length - n, 0) // 2  # the centre of a longer clip
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    waveform = waveform[offset:offset + n]
    waveform = tf.pad(waveform, [[0, n - tf.shape(waveform)[0]]])
    out = {
        "image": tf.ensure_shape(image, [size, size, 3]),
        "waveform": tf.ensure_shape(waveform, [n]),
        "boxes": tf.ensure_shape(pack_boxes(boxes, annotator),
                                 [data.MAX_ANNOTATORS, data.MAX_BOXES, 4]),
        "labeled": tf.ensure_shape(element["labeled"], []),
        "class_id": tf.ensure_shape(element["class_id"], []),
        "id": tf.ensure_shape(element["id"], []),
    }
    return out


def _resample(waveform: tf.Tensor, source_rate: int, target_rate: int) -> tf.Tensor:
    """Resamples with soxr in a numpy_function (records made for another preset)."""
    from soundloc_tf.dataloaders.audio_io import resample

    out = tf.numpy_function(lambda x: resample(x, source_rate, target_rate), [waveform],
                            tf.float32, stateful=False)
    return tf.reshape(out, [-1])


def read_records(config: Config, path_or_pattern: str, training: bool, seed: int = 0,
                 start: int = 0, repeat: bool | None = None, verify: bool = True,
                 num_shards: int = 1, shard_index: int = 0,
                 annotations: str | None = None) -> tf.data.Dataset:
    """Records -> an unbatched dataset of exactly `data.element_spec(config)`.

    Images are decoded in parallel and resized to config.image_size; audio is
    resampled to config.sample_rate when the records were made at another rate
    and cropped (centre; random offset when training) or zero-padded to
    config.num_samples.  With `training`, shards and samples are shuffled
    (seeded), every epoch reshuffled, and each sample gets a random resized
    crop and horizontal flip that move its boxes with the image; the stream
    repeats forever unless `repeat=False`.  The order is deterministic for a
    given seed and file set, so `start` (skip that many samples, cheaply,
    before decoding) resumes a run where it stopped.

    Sharding across workers: tf.distribute's auto-sharding applies (policy
    AUTO: by file when there are enough shards, else by element); pass
    `num_shards`/`shard_index` to shard explicitly instead (policy OFF).

    `annotations` (an annotation layer file, see `soundloc_tf.dataloaders.annotations`)
    replaces the records' labels: exactly the layer's pairs with boxes are
    labelled, with the layer's boxes.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0. Received: start={start}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards. Received: "
                         f"shard_index={shard_index}, num_shards={num_shards}")
    records = resolve(os.fspath(path_or_pattern))
    if verify:
        verify_shards(records)
    repeat = training if repeat is None else repeat
    decode = _decoder(config, records, training, seed, annotations)
    dataset = _serialized(records, training, seed, repeat, num_shards, shard_index)
    if start:
        dataset = dataset.skip(start)
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.with_options(_shard_options(num_shards))


def _serialized(records: RecordSet, training: bool, seed: int, repeat: bool,
                num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """`records` -> (position, serialized example) in `read_records`' order, undecoded, so
    a resume skips before the costly decode."""
    files = tf.data.Dataset.from_tensor_slices(list(records.files))
    if num_shards > 1:
        files = files.shard(num_shards, shard_index) if len(records.files) >= num_shards \
            else files
    if training:
        files = files.shuffle(len(records.files), seed=seed, reshuffle_each_iteration=True)
    # Evaluation reads the shards in order (ids come out as written); training mixes 4.
    cycle = min(4, len(records.files)) if training else 1
    if training:
        dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle,
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle)
    if num_shards > 1 and len(records.files) < num_shards:
        dataset = dataset.shard(num_shards, shard_index)
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.enumerate()


def _decoder(config: Config, records: RecordSet, training: bool, seed: int,
             annotations: str | None) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """(position, serialized) -> the element; augmentation keyed by (seed, position)."""
    audio_dtype = records.manifest["features"].get("audio_dtype", "int16")
    if audio_dtype not in AUDIO_DTYPES:
        raise ValueError(f"unknown audio_dtype in the manifest. Received: {audio_dtype!r}")
    override = None
    if annotations is not None:
        from soundloc_tf.dataloaders import annotations as annotations_lib

        labels = annotations_lib.training_labels(os.fspath(annotations), record_ids(records))
        override = annotations_lib.element_override(labels)
    source_rate = records.sample_rate

    def decode(position, serialized):
        key = tf.stack([tf.constant(seed, tf.int64), position]) if training else None
        element = _parse(serialized, audio_dtype)
        if override is not None:
            element = override(element)
        return _decode(element, config, training, source_rate, key)

    return decode


def _shard_options(num_shards: int) -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if num_shards > 1
        else tf.data.experimental.AutoShardPolicy.AUTO)
    return options


def record_ids(records: RecordSet) -> list[str]:
    """The sample ids of `records`, in file order (only the id feature is parsed)."""
    spec = {"id": _FEATURES["id"]}
    ids = tf.data.TFRecordDataset(list(records.files)).map(
        lambda s: tf.io.parse_single_example(s, spec)["id"])
    return [i.decode("utf-8") for i in ids.as_numpy_iterator()]


def count_labeled(path_or_pattern: str, annotations: str | None = None) -> tuple[int, int]:
    """(labelled pairs, all pairs) as `read_records` gives them to training.

    With `annotations` the count goes through the same override as training
    reads, so it is the number of pairs the supervised term can use.
    """
    records = resolve(os.fspath(path_or_pattern))
    dtype = records.manifest["features"].get("audio_dtype", "int16")
    override = None
    if annotations is not None:
        from soundloc_tf.dataloaders import annotations as annotations_lib

        override = annotations_lib.element_override(
            annotations_lib.training_labels(os.fspath(annotations), record_ids(records)))
    labelled = total = 0
    for serialized in tf.data.TFRecordDataset(list(records.files)):
        element = _parse(serialized, dtype)
        if override is not None:
            element = override(element)
        labelled += int(bool(element["labeled"]) and int(tf.size(element["boxes_flat"])) > 0)
        total += 1
    return labelled, total


def iterate_examples(path_or_pattern: str, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Raw records as numpy dicts (for inspection and tests; no resizing)."""
    records = resolve(os.fspath(path_or_pattern))
    if verify:
        verify_shards(records)
    dtype = records.manifest["features"].get("audio_dtype", "int16")
    for serialized in tf.data.TFRecordDataset(list(records.files)):
        element = _parse(serialized, dtype)
        yield {k: v.numpy() for k, v in element.items()}


# ---------------------------------------------------------------------------
# Several record sets in one run.

LIST_SEPARATOR = ","
# In an annotations list, the item for a set that keeps the labels its records hold.
OWN_LABELS = "-"
# Hex digits of a set's fingerprint in its `key`: enough that two sets never collide.
KEY_DIGITS = 12


@dataclasses.dataclass(frozen=True)
class RecordSource:
    """One record set of a run's list, as `parse_record_sets` checked it.

    Attributes:
      spec: the directory or shard pattern as given (what the log names).
      records: the shards it resolves to.
      weight: its share of a training mix; the shares of a list sum to 1.
      annotations: its annotation layer, or None where the records' own labels train.
    """

    spec: str
    records: RecordSet
    weight: float
    annotations: str | None = None

    @property
    def count(self) -> int:
        return self.records.count

    @functools.cached_property
    def labeled(self) -> int:
        """The pairs the supervised term can use: the manifest's count for a whole directory
        with its own labels; counted through `count_labeled` (a read of the set) for a shard
        pattern or an annotation layer, which the manifest does not describe."""
        whole = len(self.records.files) == len(self.records.manifest["shards"])
        if whole and self.annotations is None:
            return int(self.records.manifest["labeled"])
        return count_labeled(self.spec, self.annotations)[0]

    @property
    def key(self) -> str:
        """`<directory name>-<digest>` over the set's shard checksums and its layer: equal
        only for the same pairs with the same labels, whatever the list's order (names a
        per-set feature cache)."""
        checksums = {s["file"]: s["sha256"] for s in self.records.manifest["shards"]}
        digest = hashlib.sha256()
        for path in sorted(self.records.files):
            digest.update(checksums[os.path.basename(path)].encode())
        if self.annotations is not None:
            digest.update(sha256_of(self.annotations).encode())
        name = os.path.basename(os.path.normpath(self.records.directory))
        return f"{name}-{digest.hexdigest()[:KEY_DIGITS]}"


def _split_list(value: str | Sequence[str], received: str) -> list[str]:
    items = value.split(LIST_SEPARATOR) if isinstance(value, str) else list(value)
    items = [os.fspath(item).strip() for item in items]
    if not items or not all(items):
        raise ValueError(f"a list has an empty item (a doubled, leading or trailing comma?). "
                         f"Received: {received}")
    return items


def parse_record_sets(records: str | Sequence[str],
                      weights: str | Sequence[float] | None = None,
                      annotations: str | Sequence[str] | None = None) -> list[RecordSource]:
    """Checks a run's list of record sets whole, before anything is read.

    Reads only the manifests (no TensorFlow op runs, so a multi-worker strategy
    can still be set up afterwards).

    Args:
      records: record directories or shard patterns, as a list or one comma-separated
        string "A,B,C" (so a path cannot hold a comma).
      weights: each set's share of the training mix, aligned with `records` (a list or
        "0.5,0.3,0.2"), normalised to sum 1. None mixes in proportion to each set's size:
        every pair is then as likely as in one concatenated set, so adding a small set
        never over-samples it unasked; weights do that on purpose.
      annotations: annotation layers aligned with `records`, OWN_LABELS ("-") for a set
        that keeps its records' labels. One layer for several sets is refused: a layer
        labels the pairs of one set, and which one would be a guess.

    Returns:
      One `RecordSource` per set, in the order given.

    Raises:
      ValueError: naming what was received, for an empty item, a set that does not
        exist, a set listed twice (also under another spelling or as a pattern of the
        same shards), weights not one per set, a weight that is not a finite number > 0,
        or layers not one per set.
    """
    received = f"records={records!r}"
    if weights is not None:
        received += f", weights={weights!r}"
    if annotations is not None:
        received += f", annotations={annotations!r}"
    specs = _split_list(records, received)
    shares = [1.0] * len(specs)
    if weights is not None:
        try:
            shares = [float(w) for w in _split_list(weights, received)] \
                if isinstance(weights, str) else [float(w) for w in weights]
        except ValueError:
            raise ValueError(f"weights are numbers. Received: {received}") from None
        if len(shares) != len(specs):
            raise ValueError(f"need one weight per record set ({len(specs)} sets, "
                             f"{len(shares)} weights). Received: {received}")
        if not all(math.isfinite(w) and w > 0 for w in shares):
            raise ValueError(f"every weight must be a finite number > 0. Received: {received}")
    layers: list[str | None] = [None] * len(specs)
    if annotations is not None:
        layers = [None if a == OWN_LABELS else a for a in _split_list(annotations, received)]
        if len(layers) != len(specs):
            raise ValueError(f"need one annotation layer per record set ('{OWN_LABELS}' for a "
                             f"set's own labels; {len(specs)} sets, {len(layers)} layers). "
                             f"Received: {received}")
    resolved, owner = [], {}
    for spec in specs:
        if not (os.path.isdir(spec) or glob.glob(spec)):
            raise ValueError(f"no record files match: record set {spec!r} is no directory "
                             f"and matches no shard. Received: {received}")
        record_set = resolve(spec)
        for path in map(os.path.realpath, record_set.files):
            if path in owner:
                raise ValueError(f"record sets {owner[path]!r} and {spec!r} share shards; list "
                                 f"each set once (a weight sets its share). Received: {received}")
            owner[path] = spec
        resolved.append(record_set)
    if weights is None:
        shares = [float(r.count) for r in resolved]
    total = sum(shares)
    return [RecordSource(spec, record_set, share / total, layer)
            for spec, record_set, share, layer in zip(specs, resolved, shares, layers)]


def mix_datasets(datasets: Sequence[tf.data.Dataset], weights: Sequence[float],
                 seed: int) -> tf.data.Dataset:
    """Endless datasets -> one drawing each element from datasets[i] with probability
    weights[i].

    The draws are a function of `seed` alone (rerandomize_each_iteration=False), so
    every pipeline built with the same seed makes the same draws: a resume that skips
    `start` elements of a new pipeline continues the old one exactly.
    """
    return tf.data.Dataset.sample_from_datasets(list(datasets), weights=list(weights),
                                                seed=seed, rerandomize_each_iteration=False)


def read_record_sets(config: Config, sources: Sequence[RecordSource], training: bool,
                     seed: int = 0, start: int = 0, verify: bool = True) -> tf.data.Dataset:
    """Several record sets -> one unbatched dataset of `data.element_spec(config)`.

    Training mixes the sets' endless streams with `mix_datasets`, each element from
    set i with probability sources[i].weight. Set i is shuffled and augmented as
    `read_records` does with seed `seed + i` (other sets, other orders), the draws
    are seeded with `seed`, and `start` skips the mix before any decoding. So a
    resume makes the same draws from the same streams: exact when the files are
    unchanged, as for one set. Evaluation concatenates the sets in the order given.
    One set reads exactly as `read_records` reads it.

    Args:
      config: the run's config (image size, audio window).
      sources: from `parse_record_sets`.
      training: mix, shuffle, augment and repeat; else concatenate, in order, once.
      seed: the run's training seed.
      start: elements to skip (resume at step * global batch).
      verify: check every shard's checksum first (see `verify_shards`).
    """
    if not sources:
        raise ValueError(f"need at least one record set. Received: sources={sources!r}")
    if start < 0:
        raise ValueError(f"start must be >= 0. Received: start={start}")
    streams, decoders = [], []
    for index, source in enumerate(sources):
        if verify:
            verify_shards(source.records)
        set_seed = seed + index
        decoders.append(_decoder(config, source.records, training, set_seed,
                                 source.annotations))
        stream = _serialized(source.records, training, set_seed, repeat=training)
        streams.append(stream.map(lambda position, serialized, index=index:
                                  (tf.constant(index, tf.int32), position, serialized)))
    if len(streams) == 1:
        dataset = streams[0]
    elif training:
        dataset = mix_datasets(streams, [s.weight for s in sources], seed)
    else:
        dataset = functools.reduce(tf.data.Dataset.concatenate, streams)
    if start:
        dataset = dataset.skip(start)

    def decode(index, position, serialized):
        return tf.switch_case(index, [functools.partial(d, position, serialized)
                                      for d in decoders])

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.with_options(_shard_options(num_shards=1))


def describe_record_sets(sources: Sequence[RecordSource], training: bool) -> list[str]:
    """One log line per set: its path, pairs, labelled pairs and, training, its weight.

    Counting labelled pairs reads a set given as a shard pattern or with a layer (see
    `RecordSource.labeled`), so call it after any multi-worker set-up.
    """
    lines = []
    for source in sources:
        layer = f" (annotation layer {source.annotations})" if source.annotations else ""
        line = (f"{'Training' if training else 'Validation'} records {source.spec}: "
                f"{source.count} pairs, {source.labeled} labelled{layer}")
        lines.append(line + (f", weight {source.weight:.3f}" if training else ""))
    return lines
