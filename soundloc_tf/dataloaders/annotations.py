"""The annotation layer: boxes drawn on imported pairs, kept beside the records.

A record directory is never rewritten (its shards are checksummed in the
manifest); labels added later live in one JSON file next to it,
`annotations.json` by default:

  {"format": "soundloc-annotations", "version": 1,
   "records": {"count": 4, "created": "..."},          the record set it labels
   "labels": {"<sample id>": {"boxes": [[x1, y1, x2, y2], ...],   normalised
                              "no_source": false,      true: nothing visible sounds
                              "revision": 3,           +1 on every save of this id
                              "by": "ana", "at": "2026-12-01T11:40:02Z"}}}

A pair is *labelled* when it has boxes or is marked "no visible source"; a
label saved with neither clears it (the entry stays, with its revision, so a
stale tab cannot bring it back).  Only pairs with boxes give the trainer's
semi-supervised term a target: `read_records(..., annotations=PATH)` marks
exactly those as labelled and takes their boxes from this layer, and every
other pair as unlabelled, whatever the records hold.

Saving (`save_label`) is safe against the ways labels get lost:
* two tabs or processes: a lock file serialises writers, each save re-reads
  the file and changes only its own id (saves of different pairs merge), and
  a save names the revision it edited, so a save over a newer label is
  refused with `RevisionConflict` instead of overwriting it;
* a crash or full disk mid-save: the new file is written to a temporary name,
  fsynced and renamed over the old one, so readers see the old or the new
  file, never a half-written one;
* a corrupt file (hand-edited, truncated by another tool): reading raises
  `CorruptAnnotationsError` naming it, and saving refuses to replace it, so
  the labels it still holds can be recovered by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import tempfile
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

FORMAT_NAME = "soundloc-annotations"
FORMAT_VERSION = 1
FILE_NAME = "annotations.json"
# Boxes per pair: the records reader keeps this many per annotator (data.MAX_BOXES);
# refusing more here means no drawn box is silently dropped at training time.
MAX_BOXES = 4
MAX_BY_LENGTH = 100

# flock excludes other open files, also in this process; the thread lock keeps two
# threads of one server from queueing on the same descriptor order.
_THREAD_LOCK = threading.Lock()


class CorruptAnnotationsError(ValueError):
    """The annotation file exists but cannot be read as an annotation layer."""


class RevisionConflict(ValueError):
    """A save named an older revision than the file holds: someone saved in between.

    Attributes:
        sample_id: the pair.
        current: the label now in the file (None: none), for the page to show.
    """

    def __init__(self, sample_id: str, expected: int, current: dict | None):
        found = 0 if current is None else current["revision"]
        who = "" if current is None else f" by {current['by']!r} at {current['at']}"
        super().__init__(f"the label of {sample_id!r} was saved elsewhere in the meantime "
                         f"(revision {found}{who}); reload it before saving. Received: "
                         f"revision={expected}")
        self.sample_id = sample_id
        self.current = current


def default_path(records_dir: str) -> str:
    """The layer's place beside a record directory."""
    return os.path.join(records_dir, FILE_NAME)


def is_labelled(label: Mapping[str, Any] | None) -> bool:
    return bool(label) and (bool(label["boxes"]) or bool(label["no_source"]))


def _finite_number(value: Any) -> bool:
    """A number a box may hold: an int too large for a float (JSON allows any) is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _clipped(value: Any, limit: int = 200) -> str:
    """repr for an error line, cut short: a box may hold a number of thousands of digits."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return "<a number too long to print>"
    return text if len(text) <= limit else text[:limit] + "..."


def validate_boxes(boxes: Any, no_source: Any) -> list[list[float]]:
    """Checks one label's content; returns the boxes as lists of 4 floats.

    Args:
        boxes: [[x1, y1, x2, y2], ...] normalised to the image, x1 < x2, y1 < y2;
            checked here so a bad box is refused when drawn, not at training time.
        no_source: whether the pair is marked "no visible source" (then no boxes).
    """
    if not isinstance(no_source, bool):
        raise ValueError(f"no_source must be true or false. Received: no_source={no_source!r}")
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"boxes must be a list of [x1, y1, x2, y2]. Received: boxes={boxes!r}")
    if no_source and boxes:
        raise ValueError(f"a pair marked 'no visible source' has no boxes. Received: "
                         f"{len(boxes)} boxes")
    if len(boxes) > MAX_BOXES:
        raise ValueError(f"at most {MAX_BOXES} boxes per pair (the trainer keeps no more). "
                         f"Received: {len(boxes)} boxes")
    out = []
    for box in boxes:
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(_finite_number(v) for v in box)):
            raise ValueError(f"a box is 4 finite numbers x1, y1, x2, y2. Received: "
                             f"box={_clipped(box)}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise ValueError(f"box coordinates must be normalised to [0, 1] with x1 < x2 and "
                             f"y1 < y2. Received: box={list(box)!r}")
        out.append([x1, y1, x2, y2])
    return out


def _check_label(sample_id: Any, label: Any, path: str) -> None:
    if not isinstance(sample_id, str) or not isinstance(label, dict):
        raise CorruptAnnotationsError(f"corrupt annotation file: a label is not an object. "
                                      f"Received: {path!r} (id {sample_id!r})")
    try:
        validate_boxes(label.get("boxes"), label.get("no_source"))
        revision = label.get("revision")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
            raise ValueError(f"revision must be an integer >= 1. Received: {revision!r}")
        if not isinstance(label.get("by"), str) or not isinstance(label.get("at"), str):
            raise ValueError("'by' and 'at' must be strings")
    except ValueError as error:
        raise CorruptAnnotationsError(f"corrupt annotation file: the label of {sample_id!r} is "
                                      f"invalid ({error}). Received: {path!r}") from None


def load(path: str) -> dict:
    """The layer at `path`: {"format", "version", "records", "labels"}.

    A missing file is an empty layer (nothing labelled yet).  Anything else
    that is not a valid layer raises `CorruptAnnotationsError`; the file is
    left untouched.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "records": {}, "labels": {}}
    try:
        layer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptAnnotationsError(
            f"corrupt annotation file ({type(error).__name__}: {error}); it is kept as it is "
            f"and no label is saved until it is repaired or moved away. Received: {path!r}"
        ) from None
    if (not isinstance(layer, dict) or layer.get("format") != FORMAT_NAME
            or layer.get("version") != FORMAT_VERSION or not isinstance(layer.get("labels"), dict)):
        found = (layer.get("format"), layer.get("version")) if isinstance(layer, dict) else \
            type(layer).__name__
        raise CorruptAnnotationsError(
            f"not a {FORMAT_NAME} v{FORMAT_VERSION} file; it is kept as it is and no label is "
            f"saved until it is repaired or moved away. Received: {path!r} ({found})")
    for sample_id, label in layer["labels"].items():
        _check_label(sample_id, label, path)
    return layer


def _atomic_write_json(path: str, value: dict) -> None:
    """Writes `value` to a temporary file, fsyncs it, renames it over `path`, fsyncs the
    directory: after a crash at any point the file is the old one or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Exclusive lock on `<path>.lock` (a separate file: the layer itself is replaced on
    every save, and a lock on a replaced file would lock nothing)."""
    with _THREAD_LOCK:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def save_label(path: str, sample_id: str, boxes: Sequence[Sequence[float]], no_source: bool,
               by: str, revision: int, records: Mapping[str, Any] | None = None) -> dict:
    """Saves one pair's label atomically; returns it with its new revision.

    Args:
        path: the layer file (created on the first save).
        sample_id: the pair's id in the records.
        boxes: the pair's boxes (see `validate_boxes`); none and `no_source` false
            clears the label.
        no_source: marks the pair "no visible source".
        by: who saved it, stored with the time so labels can be traced.
        revision: the revision the caller edited (0: the pair had no label). A save
            over another revision raises `RevisionConflict`: someone else saved the pair
            since the caller loaded it, and overwriting would lose their label.
        records: identifies the labelled record set (count, created), stored once.
    """
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(f"sample_id must be a non-empty string. Received: {sample_id!r}")
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY_LENGTH:
        raise ValueError(f"by (who saves) must be a non-empty name of at most {MAX_BY_LENGTH} "
                         f"characters. Received: by={by!r}")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"revision must be an integer >= 0. Received: revision={revision!r}")
    boxes = validate_boxes(list(boxes) if isinstance(boxes, tuple) else boxes, no_source)
    with _locked(path):
        layer = load(path)  # a corrupt file raises here: it is never replaced
        current = layer["labels"].get(sample_id)
        found = 0 if current is None else current["revision"]
        if revision != found:
            raise RevisionConflict(sample_id, revision, current)
        label = {"boxes": boxes, "no_source": no_source, "revision": found + 1,
                 "by": by.strip(), "at": now_utc()}
        layer["labels"][sample_id] = label
        if records and not layer.get("records"):
            layer["records"] = dict(records)
        _atomic_write_json(path, layer)
    return label


# ---------------------------------------------------------------------------
# What training reads.


@dataclasses.dataclass(frozen=True)
class TrainingLabels:
    """The layer as the trainer uses it.

    Attributes:
        path: the layer file.
        boxes: id -> boxes, for the pairs with boxes (the supervised ones).
        no_source: ids marked "no visible source" (no supervised target).
    """

    path: str
    boxes: dict[str, list[list[float]]]
    no_source: frozenset[str]


def training_labels(path: str, record_ids: Sequence[str] | None = None) -> TrainingLabels:
    """Reads the layer for training; every labelled id must be in `record_ids` (if given).

    A missing file is an error here (unlike `load`): training asked for labels.
    """
    if not os.path.isfile(path):
        raise ValueError(f"no annotation file (label pairs with soundloc-studio first). "
                         f"Received: annotations={path!r}")
    layer = load(path)
    labelled = {k: v for k, v in layer["labels"].items() if is_labelled(v)}
    if record_ids is not None:
        unknown = sorted(set(labelled) - set(record_ids))
        if unknown:
            raise ValueError(f"the annotation file labels pairs the records do not hold (labels "
                             f"of another record directory?). Received: {len(unknown)} unknown "
                             f"ids, e.g. {unknown[:3]} in {path!r}")
    return TrainingLabels(path, {k: v["boxes"] for k, v in labelled.items() if v["boxes"]},
                          frozenset(k for k, v in labelled.items() if v["no_source"]))


def element_override(labels: TrainingLabels):
    """A function on the records reader's parsed elements that replaces their labels.

    Pairs with boxes in the layer get those boxes (annotator 0) and
    labeled=True; every other pair gets no boxes and labeled=False, so the
    supervised term sees exactly the layer's labelled pairs.
    """
    import tensorflow as tf

    ids = sorted(labels.boxes)
    padded = [[*labels.boxes[i], *[[0.0] * 4] * (MAX_BOXES - len(labels.boxes[i]))]
              for i in ids]
    table_boxes = tf.constant(padded or [[[0.0] * 4] * MAX_BOXES], tf.float32)
    table_counts = tf.constant([len(labels.boxes[i]) for i in ids] or [0], tf.int32)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids or [""], tf.string),
                                            tf.range(max(len(ids), 1), dtype=tf.int64)),
        default_value=-1)

    def override(element: dict) -> dict:
        row = table.lookup(element["id"]) if ids else tf.constant(-1, tf.int64)
        found = row >= 0
        count = tf.where(found, tf.gather(table_counts, tf.maximum(row, 0)), 0)
        boxes = tf.gather(table_boxes, tf.maximum(row, 0))[:count]
        return {**element, "boxes_flat": boxes,
                "box_annotator": tf.zeros([count], tf.int64), "labeled": found}

    return override
