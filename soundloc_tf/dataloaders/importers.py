"""Importers: public data sets, the user's videos and composite scenes -> records.

Each importer is a generator of samples (the dicts `records.write_records`
takes) that never stops on one bad input: it records the path and a short
reason in an `ImportReport` and goes on.  `run_import` drives one importer
with a progress bar on stderr and writes the records; its report is stored
in the manifest (`extra.import`) and printed by tools/import_data.py.

Input layouts (docs/DATA.md has the details):

  flickr       frames/<id>.jpg, audio/<id>.{wav,mp3,flac,ogg}, Annotations/<id>.xml
               (optional), and an id list (one id per line; .txt or .csv)
  vggss        vggss.json ([{"file": "<video id>_<start s>", "bbox": [[x1,y1,x2,y2], ...],
               "class": ...}]) and the clips: clips/<file>.<video ext>, or frames/<file>.jpg
               + audio/<file>.wav
  avsbench_s4  <video>/frames/<t>.jpg, <video>/audio.wav, <video>/boxes.json
               ({"class": name, "seconds": [{"second": t, "boxes": [[x1,y1,x2,y2], ...]}]},
               normalised coordinates)
  videos       any folder of videos (unlabelled): frames + audio track via PyAV
  composites   objects/<class>__<n>.png (RGBA cut-outs), sounds/<class>__<n>.wav,
               backgrounds/*.jpg, optional manifest.json with classes and groups
  mosaics      photos/*.jpg (whole photos), sounds/<class>__<n>.wav and manifest.json
               ({"photos": [{"file", "class", "boxes"}], "sounds": [...], "groups": {...}}):
               grid x grid mosaics of photos of distinct groups, one tile sounding
  photos       the same folder: single photos with a recording of their class

Mosaics and photos split into leave-photos-out folds (`photo_folds`): a fold's
validation photos and recordings never appear in its training split, nor, via
`holdout_photos`, in composites built from another folder.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ElementTree
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

import numpy as np

from soundloc_tf.dataloaders import audio_io, data, records

FORMATS = ("flickr", "vggss", "avsbench_s4", "videos", "composites", "mosaics", "photos")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FLICKR_FRAME = 256.0  # Flickr-SoundNet XML boxes are in a 256x256 frame
# Bounds on what one stored sample holds: the literature's clips are 3-20 s, and ten minutes
# at 192 kHz is already 115 M samples per record, past any use as one training pair.
MAX_CLIP_SECONDS = 600.0
MAX_SAMPLE_RATE = 192_000
# Pairs of one video are decoded together; beyond this the frames alone pass 10 GB.
MAX_PAIRS_PER_CLIP = 1000
# A video pair's id holds its time to 10 ms (`stem@12.34`), so pairs must lie this far apart.
PAIR_ID_RESOLUTION_S = 0.01
# Composites: candidate positions per pasted object; photos: candidate crops per photo.
PLACEMENT_TRIES = 8
# Blended pastes (`blend_cutout`): the share of the way an object's mean colour moves toward
# the background's (drawn per paste), the blurs tried in turn to match the background's
# sharpness (small: a blurrier object loses what makes it recognisable), and the matte's
# feather as a share of the cut-out's longest side.
BLEND_COLOUR = (0.0, 0.3)
BLEND_BLUR_SIGMAS = (0.0, 0.5, 1.0)
BLEND_FEATHER = 0.01
Sample = dict[str, Any]


# ---------------------------------------------------------------------------
# Reporting.


@dataclasses.dataclass
class ImportReport:
    """What one import took and left, with the reason for every skipped input."""

    format: str
    imported: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def reasons(self) -> dict[str, int]:
        return dict(collections.Counter(reason.split(":")[0] for _, reason in self.skipped))

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "imported": self.imported,
                "skipped": len(self.skipped), "skipped_by_reason": self.reasons(),
                "skipped_items": [{"path": p, "reason": r} for p, r in self.skipped],
                "notes": dict(self.notes), "seconds": round(self.seconds, 2),
                "items_per_second": round(self.imported / max(self.seconds, 1e-9), 2)}

    def summary(self, max_items: int = 20) -> str:
        lines = [f"{self.format}: imported {self.imported}, skipped {len(self.skipped)} "
                 f"in {self.seconds:.1f} s ({self.imported / max(self.seconds, 1e-9):.1f} "
                 f"items/s)"]
        for reason, count in sorted(self.reasons().items()):
            lines.append(f"  {count:6d}  {reason}")
        for note, count in sorted(self.notes.items()):
            lines.append(f"  note: {note}: {count}")
        for path, reason in self.skipped[:max_items]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > max_items:
            lines.append(f"  ... and {len(self.skipped) - max_items} more (see the manifest's "
                         f"extra.import.skipped_items)")
        return "\n".join(lines)


class Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.2 s."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None,
                 width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.count, self.started, self.drawn = 0, time.perf_counter(), 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.drawn >= 0.2 or self.count == self.total:
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        if self.total:
            done = int(self.width * self.count / self.total)
            bar = "#" * done + "." * (self.width - done)
            text = f"\r{self.label} [{bar}] {self.count}/{self.total} {rate:.1f}/s"
        else:
            text = f"\r{self.label} {self.count} {rate:.1f}/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()


def track(items: Sequence[Any], label: str, stream: TextIO | None = None) -> Iterator[Any]:
    progress = Progress(len(items), label, stream)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()


# ---------------------------------------------------------------------------
# Shared decoding with reasons.


class SkipItem(Exception):
    """Raised inside an importer for an input to skip; the message is the reason."""


def read_image(path: str) -> tuple[bytes, int, int]:
    """Checked image bytes (JPEG/PNG kept as is, others re-encoded) and width, height."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as image:
            kind = image.format
            image.load()  # decodes every pixel: truncated or corrupt files fail here
            width, height = image.size
            rgb = image.convert("RGB") if kind not in ("JPEG", "PNG") else None
    except FileNotFoundError:
        raise SkipItem("missing image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SkipItem(f"corrupt image: {error}") from None
    if width < 8 or height < 8:
        raise SkipItem(f"corrupt image: {width}x{height} is too small")
    if rgb is not None:
        raw = records.encode_image(np.asarray(rgb), "jpeg")
    return raw, width, height


def read_audio(path: str, sample_rate: int, num_samples: int | None) -> np.ndarray:
    if not os.path.exists(path):
        raise SkipItem("missing audio")
    try:
        return audio_io.load_audio(path, sample_rate, num_samples)
    except audio_io.AudioError as error:
        raise SkipItem(str(error)) from None


def find_with_extension(directory: str, stem: str, extensions: Sequence[str]) -> str | None:
    for ext in extensions:
        path = os.path.join(directory, stem + ext)
        if os.path.exists(path):
            return path
    return None


def _frame_boxes(boxes: Sequence[Sequence[float]], report: ImportReport) -> list[list[float]]:
    """Clips normalised boxes to the image, drops empty ones, keeps MAX_BOXES (counted)."""
    kept = []
    for box in boxes:
        x1, y1, x2, y2 = (float(np.clip(v, 0.0, 1.0)) for v in box)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            report.notes["empty box dropped"] += 1
            continue
        kept.append([x1, y1, x2, y2])
    if len(kept) > data.MAX_BOXES:
        report.notes[f"boxes beyond {data.MAX_BOXES} per annotator dropped"] += \
            len(kept) - data.MAX_BOXES
        kept = kept[:data.MAX_BOXES]
    return kept


# ---------------------------------------------------------------------------
# Flickr-SoundNet.


def parse_flickr_xml(path: str) -> list[list[list[float]]]:
    """A Flickr-SoundNet annotation -> boxes per annotator, normalised.

    Every `bbox` element (a grandchild of the root, as the LVS/EZ-VSL loaders
    read it) holds a first child (the annotator's label) then xmin, ymin,
    xmax, ymax in a 256x256 frame.  Boxes are grouped by that first child's
    text when it tells annotators apart; otherwise each bbox counts as one
    annotator, which reproduces the LVS/EZ-VSL ground-truth map.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise SkipItem(f"malformed XML: {error}") from None
    labelled = []
    for child in root:
        for element in child:
            if element.tag != "bbox":
                continue
            parts = list(element)
            if len(parts) < 5:
                raise SkipItem(f"malformed XML: a bbox has {len(parts)} children, expected 5")
            try:
                coords = [float(p.text) / FLICKR_FRAME for p in parts[1:5]]
            except (TypeError, ValueError):
                raise SkipItem("malformed XML: a bbox coordinate is not a number") from None
            labelled.append(((parts[0].text or "").strip(), coords))
    if not labelled:
        raise SkipItem("missing annotation: no bbox in the XML")
    labels = list(dict.fromkeys(label for label, _ in labelled))
    if 1 < len(labels) <= data.MAX_ANNOTATORS:
        return [[c for label, c in labelled if label == wanted] for wanted in labels]
    return [[c] for _, c in labelled]


def read_id_list(path: str) -> list[str]:
    """Ids, one per line (.txt) or in the first column (.csv); blank lines ignored."""
    with open(path, newline="") as f:
        if path.endswith(".csv"):
            ids = [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
        else:
            ids = [line.strip() for line in f if line.strip()]
    return [os.path.splitext(i)[0] for i in ids]


def flickr_samples(root: str, ids: Sequence[str] | None, sample_rate: int, num_samples: int,
                   report: ImportReport, require_annotation: bool = False,
                   progress: TextIO | None = None) -> Iterator[Sample]:
    frames, audio_dir = os.path.join(root, "frames"), os.path.join(root, "audio")
    annotations = os.path.join(root, "Annotations")
    if ids is None:
        if not os.path.isdir(frames):
            raise ValueError(f"no frames/ folder in the Flickr-SoundNet root. Received: {root!r}")
        ids = sorted(os.path.splitext(f)[0] for f in os.listdir(frames)
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    seen: set[str] = set()
    for sid in track(list(ids), "flickr", progress):
        where = os.path.join(frames, sid + ".jpg")
        try:
            if sid in seen:
                raise SkipItem("duplicate id")
            seen.add(sid)
            image_path = find_with_extension(frames, sid, (".jpg", ".jpeg", ".png"))
            if image_path is None:
                raise SkipItem("missing image")
            where = image_path
            image, _, _ = read_image(image_path)
            audio_path = find_with_extension(audio_dir, sid, AUDIO_EXTENSIONS)
            if audio_path is None:
                where = os.path.join(audio_dir, sid + ".wav")
                raise SkipItem("missing audio")
            where = audio_path
            waveform = read_audio(audio_path, sample_rate, num_samples)
            xml_path = os.path.join(annotations, sid + ".xml")
            boxes = []
            if os.path.exists(xml_path):
                where = xml_path
                boxes = [_frame_boxes(b, report) for b in parse_flickr_xml(xml_path)]
                if len(boxes) > data.MAX_ANNOTATORS:
                    report.notes[f"annotators beyond {data.MAX_ANNOTATORS} dropped"] += \
                        len(boxes) - data.MAX_ANNOTATORS
                    boxes = boxes[:data.MAX_ANNOTATORS]
            elif require_annotation:
                where = xml_path
                raise SkipItem("missing annotation")
        except SkipItem as skip:
            report.skip(where, str(skip))
            continue
        report.imported += 1
        yield {"image": image, "waveform": waveform, "sample_rate": sample_rate,
               "boxes": boxes, "labeled": any(boxes), "class_id": -1, "id": sid}


# ---------------------------------------------------------------------------
# Videos (PyAV).


def video_duration(container) -> float:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0
    raise SkipItem("unreadable video: unknown duration")


def frames_at(path: str, times: Sequence[float]) -> list[np.ndarray]:
    """RGB frames [H, W, 3] uint8 nearest at or after each time (seconds, increasing)."""
    import av

    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        for target in times:
            offset = int(target / stream.time_base) if stream.time_base else 0
            container.seek(max(offset, 0), stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is not None and frame.time + 1e-6 >= target:
                    break
            if chosen is None:
                raise SkipItem("unreadable video: no frame decoded")
            out.append(chosen.to_ndarray(format="rgb24"))
    return out


def clip_pairs(path: str, sample_rate: int, num_samples: int, pairs: int) -> list[
        tuple[float, np.ndarray, np.ndarray]]:
    """`pairs` (time, frame, audio window centred on the frame) of one video."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SkipItem("unreadable video: no video stream")
            duration = video_duration(container)
        audio = audio_io.load_audio(path, sample_rate)  # PyAV path for containers
    except SkipItem:
        raise
    except audio_io.AudioError as error:
        raise SkipItem(str(error)) from None
    except Exception as error:  # FFmpeg raises many error types
        raise SkipItem(f"unreadable video: {type(error).__name__}: {error}") from None
    if duration / pairs <= PAIR_ID_RESOLUTION_S:
        raise SkipItem(f"{pairs} pairs do not fit a {duration:.2f} s clip (pairs lie more than "
                       f"{PAIR_ID_RESOLUTION_S * 1000:g} ms apart, at most "
                       f"{math.ceil(duration / PAIR_ID_RESOLUTION_S) - 1} here)")
    times = [(i + 0.5) * duration / pairs for i in range(pairs)]
    try:
        frames = frames_at(path, times)
    except SkipItem:
        raise
    except Exception as error:
        raise SkipItem(f"unreadable video: {type(error).__name__}: {error}") from None
    result = []
    for t, frame in zip(times, frames):
        centre = int(round(t * sample_rate))
        window = audio_io.fit_length(audio, num_samples,
                                     offset=max(centre - num_samples // 2, 0))
        if np.max(np.abs(window), initial=0.0) < audio_io.SILENCE_PEAK:
            raise SkipItem(f"silent audio: around {t:.1f} s")
        result.append((t, frame, window))
    return result


def video_samples(root: str, sample_rate: int, num_samples: int, report: ImportReport,
                  pairs_per_clip: int = 1, progress: TextIO | None = None) -> Iterator[Sample]:
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(VIDEO_EXTENSIONS))
    if not paths:
        raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under the folder. "
                         f"Received: {root!r}")
    seen: set[str] = set()
    for path in track(paths, "videos", progress):
        stem = os.path.splitext(os.path.relpath(path, root))[0]
        try:
            if stem in seen:
                raise SkipItem(f"duplicate id: {stem} (same name, other extension)")
            seen.add(stem)
            pairs = clip_pairs(path, sample_rate, num_samples, pairs_per_clip)
        except SkipItem as skip:
            report.skip(path, str(skip))
            continue
        for t, frame, window in pairs:
            report.imported += 1
            yield {"image": records.encode_image(frame, "jpeg"), "waveform": window,
                   "sample_rate": sample_rate, "boxes": [], "labeled": False, "class_id": -1,
                   "id": f"{stem}@{t:.2f}"}


# ---------------------------------------------------------------------------
# VGG-SS.


def parse_vggss(path: str) -> list[dict]:
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"malformed JSON: could not read the VGG-SS annotation. Received: "
                         f"{path!r} ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f"malformed JSON: vggss.json must hold a list of entries. Received: "
                         f"{type(entries).__name__}")
    return entries


def vggss_samples(root: str, sample_rate: int, num_samples: int, report: ImportReport,
                  annotation: str | None = None, progress: TextIO | None = None
                  ) -> Iterator[Sample]:
    annotation = annotation or os.path.join(root, "vggss.json")
    entries = parse_vggss(annotation)
    classes = sorted({str(e["class"]) for e in entries if isinstance(e, dict) and "class" in e})
    class_ids = {name: i for i, name in enumerate(classes)}
    report.notes["classes"] = len(classes)
    seen: set[str] = set()
    for index, entry in enumerate(track(entries, "vggss", progress)):
        where = f"{annotation}[{index}]"
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise SkipItem("malformed JSON: an entry without a 'file' string")
            sid = entry["file"]
            boxes = entry.get("bbox")
            if (not isinstance(boxes, list) or not boxes
                    or not all(isinstance(b, list) and len(b) == 4 for b in boxes)):
                raise SkipItem("malformed JSON: 'bbox' must be a non-empty list of "
                               "[x1, y1, x2, y2]")
            try:
                boxes = [[float(v) for v in b] for b in boxes]
            except (TypeError, ValueError):
                raise SkipItem("malformed JSON: a bbox coordinate is not a number") from None
            if sid in seen:
                raise SkipItem(f"duplicate id: {sid}")
            seen.add(sid)
            clip = find_with_extension(os.path.join(root, "clips"), sid, VIDEO_EXTENSIONS)
            if clip is not None:
                where = clip
                _, frame, waveform = clip_pairs(clip, sample_rate, num_samples, 1)[0]
                image = records.encode_image(frame, "jpeg")
            else:
                frame_path = find_with_extension(os.path.join(root, "frames"), sid,
                                                 IMAGE_EXTENSIONS)
                if frame_path is None:
                    where = os.path.join(root, "clips", sid + ".mp4")
                    raise SkipItem("missing clip (neither clips/<file>.<video> nor "
                                   "frames/<file>.jpg)")
                where = frame_path
                image, _, _ = read_image(frame_path)
                audio_path = find_with_extension(os.path.join(root, "audio"), sid,
                                                 AUDIO_EXTENSIONS)
                if audio_path is None:
                    raise SkipItem("missing audio")
                where = audio_path
                waveform = read_audio(audio_path, sample_rate, num_samples)
            framed = _frame_boxes(boxes, report)
        except SkipItem as skip:
            report.skip(where, str(skip))
            continue
        report.imported += 1
        yield {"image": image, "waveform": waveform, "sample_rate": sample_rate,
               "boxes": [framed], "labeled": True,
               "class_id": class_ids.get(str(entry.get("class")), -1), "id": sid}


# ---------------------------------------------------------------------------
# AVSBench S4 (per-second boxes).


def avsbench_samples(root: str, sample_rate: int, num_samples: int, report: ImportReport,
                     progress: TextIO | None = None) -> Iterator[Sample]:
    videos = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not videos:
        raise ValueError(f"no video folders under the AVSBench root. Received: {root!r}")
    parsed = []
    for video in videos:
        path = os.path.join(root, video, "boxes.json")
        try:
            with open(path) as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or not isinstance(meta.get("seconds"), list):
                raise ValueError("expected {'class': ..., 'seconds': [...]}")
            parsed.append((video, meta))
        except FileNotFoundError:
            report.skip(path, "missing annotation")
        except (OSError, ValueError) as error:
            report.skip(path, f"malformed JSON: {error}")
    classes = sorted({str(m.get("class")) for _, m in parsed if m.get("class") is not None})
    class_ids = {name: i for i, name in enumerate(classes)}
    for video, meta in track(parsed, "avsbench_s4", progress):
        folder = os.path.join(root, video)
        audio_path = os.path.join(folder, "audio.wav")
        try:
            if not os.path.exists(audio_path):
                raise SkipItem("missing audio")
            try:
                audio = audio_io.load_audio(audio_path, sample_rate)
            except audio_io.AudioError as error:
                raise SkipItem(str(error)) from None
        except SkipItem as skip:
            report.skip(audio_path, str(skip))
            continue
        for index, second in enumerate(meta["seconds"]):
            where = f"{os.path.join(folder, 'boxes.json')}[{index}]"
            try:
                if not isinstance(second, dict) or "second" not in second:
                    raise SkipItem("malformed JSON: an entry without 'second'")
                t = int(second["second"])
                boxes = second.get("boxes") or []
                if not all(isinstance(b, list) and len(b) == 4 for b in boxes):
                    raise SkipItem("malformed JSON: boxes must be [x1, y1, x2, y2] lists")
                frame_path = find_with_extension(os.path.join(folder, "frames"), str(t),
                                                 IMAGE_EXTENSIONS)
                if frame_path is None:
                    where = os.path.join(folder, "frames", f"{t}.jpg")
                    raise SkipItem("missing image")
                where = frame_path
                image, _, _ = read_image(frame_path)
                centre = int(round((t + 0.5) * sample_rate))
                window = audio_io.fit_length(audio, num_samples,
                                             offset=max(centre - num_samples // 2, 0))
                if np.max(np.abs(window), initial=0.0) < audio_io.SILENCE_PEAK:
                    raise SkipItem(f"silent audio: second {t}")
                framed = _frame_boxes([[float(v) for v in b] for b in boxes], report)
            except SkipItem as skip:
                report.skip(where, str(skip))
                continue
            report.imported += 1
            yield {"image": image, "waveform": window, "sample_rate": sample_rate,
                   "boxes": [framed] if framed else [], "labeled": bool(framed),
                   "class_id": class_ids.get(str(meta.get("class")), -1),
                   "id": f"{video}/{t}"}


# ---------------------------------------------------------------------------
# Composite scenes from RGBA cut-outs.


@dataclasses.dataclass
class StampSet:
    """Cut-outs, sounds and backgrounds by class, with the classes' groups."""

    root: str
    classes: list[str]
    groups: dict[str, str]
    objects: dict[str, list[np.ndarray]]  # class -> RGBA uint8 arrays
    sounds: dict[str, list[np.ndarray]]  # class -> mono float32 at the import rate
    backgrounds: list[np.ndarray]  # RGB uint8


def _class_of(filename: str) -> str:
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem.split("__")[0]


def load_stamps(root: str, sample_rate: int, report: ImportReport,
                progress: TextIO | None = None,
                exclude_sources: Iterable[str] = ()) -> StampSet:
    """Reads a stamps folder; unusable files are skipped with a reason.

    Classes and groups come from manifest.json when present (fields `classes`,
    `groups`), else from the file names `<class>__<n>`; a class without a
    group is its own group. Recordings whose source (`recording_source`) is
    in `exclude_sources` are left out: another set's held-out recordings.
    """
    from PIL import Image

    manifest_path = os.path.join(root, "manifest.json")
    classes, groups, sources = None, {}, {}
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            classes = [str(c) for c in manifest.get("classes", [])] or None
            groups = {str(k): str(v) for k, v in (manifest.get("groups") or {}).items()}
            for entry in manifest.get("sounds") or []:
                name = entry.get("sound_wav") or entry.get("file")
                if name:
                    sources[os.path.normpath(str(name))] = recording_source(entry, str(name))
        except (OSError, ValueError, AttributeError) as error:
            report.skip(manifest_path, f"malformed JSON: {error}; using file names")
    exclude_sources = set(exclude_sources)

    def listing(sub: str, extensions: tuple[str, ...]) -> list[str]:
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            raise ValueError(f"the stamps folder needs {sub}/. Received: {root!r}")
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                      if f.lower().endswith(extensions))

    objects: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    sounds: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    backgrounds = []
    files = ([("object", p) for p in listing("objects", (".png",))]
             + [("sound", p) for p in listing("sounds", AUDIO_EXTENSIONS)]
             + [("background", p) for p in listing("backgrounds", IMAGE_EXTENSIONS)])
    for kind, path in track(files, "stamps", progress):
        try:
            if kind == "object":
                try:
                    with Image.open(path) as image:
                        image.load()
                        if "A" not in image.getbands():
                            raise SkipItem("no alpha channel (an object must be an RGBA cut-out)")
                        rgba = np.asarray(image.convert("RGBA"))
                except (OSError, SyntaxError, ValueError) as error:
                    raise SkipItem(f"corrupt image: {error}") from None
                if (rgba[..., 3] > 127).sum() < 16:
                    raise SkipItem("empty cut-out: fewer than 16 opaque pixels")
                objects[_class_of(path)].append(rgba)
            elif kind == "sound":
                relative = os.path.normpath(os.path.relpath(path, root))
                if sources.get(relative, relative) in exclude_sources:
                    report.notes["held-out recording left out"] += 1
                    continue
                sounds[_class_of(path)].append(read_audio(path, sample_rate, None))
            else:
                raw, _, _ = read_image(path)
                with Image.open(io.BytesIO(raw)) as image:
                    backgrounds.append(np.asarray(image.convert("RGB")))
        except SkipItem as skip:
            report.skip(path, str(skip))
    usable = sorted(set(objects) & set(sounds))
    for name in sorted(set(objects) ^ set(sounds)):
        report.notes[f"class without {'sound' if name in objects else 'object'} unused"] += 1
    classes = [c for c in (classes or usable) if c in usable]
    if len(classes) < 1 or not backgrounds:
        raise ValueError(f"the stamps folder has no usable class (object + sound) or no "
                         f"background. Received: {root!r}")
    groups = {c: groups.get(c, c) for c in classes}
    return StampSet(root, classes, groups, dict(objects), dict(sounds), backgrounds)


def _resize_rgba(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgba).resize((max(width, 1), max(height, 1)),
                                                   Image.Resampling.BILINEAR))


def _background_crop(background: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = background.shape[:2]
    side = int(min(h, w) * rng.uniform(0.7, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = background[top:top + side, left:left + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def gaussian_blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """`array` [H, W] or [H, W, C] (float) blurred with a Gaussian of `sigma` pixels.

    Separable, edges reflected; sigma <= 0 returns the array unchanged.
    """
    if sigma <= 0:
        return array
    radius = max(int(math.ceil(3 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = array.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + length), axis=axis)
                  for k, w in enumerate(taps))
    return out.astype(np.float32)


def _sharpness(rgb: np.ndarray, where: np.ndarray) -> float:
    """Mean squared Laplacian of the grey image over `where`: how much fine detail it has."""
    grey = rgb.mean(axis=-1)
    padded = np.pad(grey, 1, mode="edge")
    laplacian = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
                 - 4 * grey)
    return float(np.mean(laplacian[where] ** 2)) if where.any() else 0.0


def blend_cutout(patch: np.ndarray, region: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Pastes an RGBA cut-out so that its edge is no cue: the pasted RGB [h, w, 3].

    A hard paste leaves a seam a network can find without knowing what the
    object is.  Here the object's mean colour moves part of the way
    (BLEND_COLOUR) toward the background's, it is blurred toward the
    background's sharpness (never sharpened, at most BLEND_BLUR_SIGMAS[-1]),
    and its alpha matte is feathered in proportion to its size
    (BLEND_FEATHER), as "Cut, Paste and Learn" (Dwibedi et al., 2017) blends.

    Args:
      patch: the cut-out, float [h, w, 4] in 0..255.
      region: the background under it, float [h, w, 3] in 0..255.
      rng: draws the strength of the colour match.
    """
    rgb, alpha = patch[..., :3], patch[..., 3] / 255.0
    inside, outside = alpha > 0.5, alpha <= 0.5
    if inside.any():
        # The mean only: the object keeps its contrast, so it stays recognisable.
        strength = rng.uniform(*BLEND_COLOUR)
        shift = strength * (region.mean(axis=(0, 1)) - rgb[inside].mean(0))
        rgb = np.clip(rgb + shift, 0.0, 255.0)
        background = _sharpness(region, outside if outside.any() else np.ones_like(inside))
        for sigma in BLEND_BLUR_SIGMAS:
            blurred = gaussian_blur(rgb, sigma)
            if _sharpness(blurred, inside) <= background:
                break
        rgb = blurred
    feather = BLEND_FEATHER * max(alpha.shape)
    alpha = np.clip(gaussian_blur(alpha, feather), 0.0, 1.0)[..., None]
    return alpha * rgb + (1 - alpha) * region


def _group_category(classes: Iterable[str], categories: Mapping[str, str]) -> str:
    """The category of a group of classes that sound alike: its first class's, or "other"."""
    return categories.get(sorted(classes)[0], "other")


def compose_scene(stamps: StampSet, rng: np.random.Generator, size: int, num_samples: int,
                  min_objects: int = 1, max_objects: int = 3,
                  object_size: tuple[float, float] = (0.3, 0.5), snr_db: tuple[float, float]
                  = (10.0, 30.0), blend_edges: bool = False,
                  categories: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One scene: background, 1..max_objects cut-outs of distinct groups, one sounding.

    The sounding object is pasted last (never occluded); its box is the
    bounding box of its alpha > 0.5 pixels in the final image, so it is
    exact to the pixel.  The sound is a recording of its class, looped to the
    clip length, plus white noise at a random SNR.  `blend_edges` pastes with
    `blend_cutout` (feathered, colour- and blur-matched) instead of the plain
    alpha; the boxes stay those of the unfeathered alpha. With `categories` (class ->
    category) the distractors are of the source's category: hard negatives, since a map
    that finds "an animal" without listening is then wrong as often as a guess.
    """
    by_group: dict[str, list[str]] = collections.defaultdict(list)
    for name in stamps.classes:
        by_group[stamps.groups[name]].append(name)
    group_names = sorted(by_group)
    if categories is None:
        count = int(rng.integers(min_objects, min(max_objects, len(group_names)) + 1))
        chosen_groups = [group_names[g]
                         for g in rng.choice(len(group_names), size=count, replace=False)]
    else:
        source_group = group_names[rng.integers(len(group_names))]
        category = _group_category(by_group[source_group], categories)
        peers = [g for g in group_names if g != source_group
                 and _group_category(by_group[g], categories) == category]
        count = int(rng.integers(min(min_objects, len(peers) + 1),
                                 min(max_objects, len(peers) + 1) + 1))
        chosen_groups = [source_group, *(peers[g] for g in rng.choice(
            len(peers), size=count - 1, replace=False))]
    chosen = [by_group[g][rng.integers(len(by_group[g]))] for g in chosen_groups]
    canvas = _background_crop(stamps.backgrounds[rng.integers(len(stamps.backgrounds))],
                              size, rng).astype(np.float32)
    boxes = []
    occupied = np.zeros([size, size], bool)
    # Its own stream (spawning draws nothing from `rng`): a blended scene keeps the layout,
    # objects and sound of the plain one.
    blend_rng = rng.spawn(1)[0] if blend_edges else None
    for name in reversed(chosen):  # distractors first, chosen[0] (the source) last
        cutout = stamps.objects[name][rng.integers(len(stamps.objects[name]))]
        longest = rng.uniform(*object_size) * size
        scale = longest / max(cutout.shape[:2])
        w = max(int(round(cutout.shape[1] * scale)), 2)
        h = max(int(round(cutout.shape[0] * scale)), 2)
        w, h = min(w, size), min(h, size)
        patch = _resize_rgba(cutout, w, h).astype(np.float32)
        alpha = patch[..., 3:] / 255.0
        opaque = alpha[..., 0] > 0.5
        # Of a few random places, the one that covers the objects already pasted least.
        best = None
        for _ in range(PLACEMENT_TRIES):
            left, top = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            overlap = int(np.count_nonzero(occupied[top:top + h, left:left + w] & opaque))
            if best is None or overlap < best[0]:
                best = (overlap, left, top)
        _, left, top = best
        occupied[top:top + h, left:left + w] |= opaque
        region = canvas[top:top + h, left:left + w]
        canvas[top:top + h, left:left + w] = (
            blend_cutout(patch, region, blend_rng) if blend_edges
            else alpha * patch[..., :3] + (1 - alpha) * region)
        mask = np.zeros([size, size], bool)
        mask[top:top + h, left:left + w] = alpha[..., 0] > 0.5
        boxes.append(mask)
    source_mask = boxes[-1]
    ys, xs = np.nonzero(source_mask)
    box = [xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size]
    source = chosen[0]
    recording = stamps.sounds[source][rng.integers(len(stamps.sounds[source]))]
    reps = int(math.ceil(num_samples / recording.shape[0]))
    sound = np.tile(recording, reps)[:num_samples]
    rms = float(np.sqrt(np.mean(sound ** 2))) + 1e-8
    noise = rng.standard_normal(num_samples).astype(np.float32)
    sound = sound + noise * rms * 10 ** (-rng.uniform(*snr_db) / 20.0)
    sound = (sound / max(np.max(np.abs(sound)), 1e-8) * 0.9).astype(np.float32)
    return {"image": np.clip(np.round(canvas), 0, 255).astype(np.uint8), "waveform": sound,
            "box": box, "mask": source_mask, "class": source, "classes": chosen}


def composite_samples(root: str, sample_rate: int, num_samples: int, report: ImportReport,
                      count: int, image_size: int = 256, seed: int = 0,
                      label_fraction: float = 1.0, max_objects: int = 3,
                      progress: TextIO | None = None, stamps: StampSet | None = None,
                      blend_edges: bool = False) -> Iterator[Sample]:
    stamps = stamps or load_stamps(root, sample_rate, report, progress)
    class_ids = {name: i for i, name in enumerate(stamps.classes)}
    report.notes["classes"] = len(stamps.classes)
    for index in track(range(count), "composites", progress):
        rng = np.random.default_rng([seed, index])
        scene = compose_scene(stamps, rng, image_size, num_samples, max_objects=max_objects,
                              blend_edges=blend_edges)
        labeled = bool(np.random.default_rng([seed, index, 1]).uniform() < label_fraction)
        report.imported += 1
        yield {"image": records.encode_image(scene["image"], "jpeg"),
               "waveform": scene["waveform"], "sample_rate": sample_rate,
               "boxes": [[scene["box"]]], "labeled": labeled,
               "class_id": class_ids[scene["class"]], "id": f"composite/{seed}/{index}"}


# ---------------------------------------------------------------------------
# Whole photographs: single photos and mosaics, in folds by photo and recording.


@dataclasses.dataclass
class PhotoSet:
    """Whole photos with boxes of their sounding things, and recordings, by class."""

    root: str
    groups: dict[str, str]  # class -> group (classes that sound alike share one)
    photos: list[dict]  # {"file", "class", "boxes": [[x1, y1, x2, y2]], "image": RGB uint8}
    sounds: list[dict]  # {"file", "class", "source", "waveform"}


def recording_source(entry: dict, fallback: str) -> str:
    """Where a recording came from: one recording shipped in two sets is one recording.

    The realsets manifests name the file inside its package (`path_in_package`
    in photos/, `source_file` in stamps/); other folders fall back to the file.
    """
    return str(entry.get("path_in_package") or entry.get("source_file") or fallback)


def load_photo_set(root: str, sample_rate: int, report: ImportReport,
                   progress: TextIO | None = None) -> PhotoSet:
    """Reads photos/, sounds/ and manifest.json (its `photos[].boxes` are required).

    Photos without a usable box, unreadable files and classes without both a
    photo and a recording are skipped with a reason.
    """
    from PIL import Image

    manifest_path = os.path.join(root, "manifest.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        photo_entries = list(manifest["photos"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"a photos folder needs manifest.json with a `photos` list of "
                         f"{{file, class, boxes}}. Received: {manifest_path!r} ({error})") from None
    groups = {str(k): str(v) for k, v in (manifest.get("groups") or {}).items()}
    sound_entries = {os.path.normpath(str(e.get("file", ""))): e
                     for e in manifest.get("sounds") or [] if isinstance(e, dict)}
    sounds_dir = os.path.join(root, "sounds")
    if not os.path.isdir(sounds_dir):
        raise ValueError(f"a photos folder needs sounds/. Received: {root!r}")
    sound_files = sorted(os.path.join("sounds", f) for f in os.listdir(sounds_dir)
                         if f.lower().endswith(AUDIO_EXTENSIONS))
    photos, sounds = [], []
    items = [("photo", e) for e in photo_entries] + [("sound", f) for f in sound_files]
    for kind, item in track(items, "photos", progress):
        path = os.path.join(root, str(item.get("file", "")) if kind == "photo" else item)
        try:
            if kind == "sound":
                entry = sound_entries.get(os.path.normpath(item), {})
                sounds.append({"file": item, "class": str(entry.get("class", _class_of(item))),
                               "source": recording_source(entry, item),
                               "waveform": read_audio(path, sample_rate, None)})
                continue
            if not isinstance(item, dict) or "file" not in item:
                raise SkipItem("manifest entry without `file`")
            boxes = [[float(v) for v in box] for box in item.get("boxes") or []]
            boxes = [b for b in boxes if len(b) == 4 and 0 <= b[0] < b[2] <= 1
                     and 0 <= b[1] < b[3] <= 1]
            if not boxes:
                raise SkipItem("no box in [0, 1] with x1 < x2, y1 < y2")
            raw, _, _ = read_image(path)
            with Image.open(io.BytesIO(raw)) as image:
                rgb = np.asarray(image.convert("RGB"))
            photos.append({"file": item["file"], "class": str(item.get("class",
                                                                      _class_of(path))),
                           "boxes": boxes, "image": rgb})
        except SkipItem as skip:
            report.skip(path, str(skip))
    with_sound = {s["class"] for s in sounds}
    for photo in [p for p in photos if p["class"] not in with_sound]:
        report.skip(os.path.join(root, photo["file"]), "class without a recording")
    photos = [p for p in photos if p["class"] in with_sound]
    with_photo = {p["class"] for p in photos}
    if not photos:
        raise ValueError(f"the photos folder has no usable photo with a recording of its "
                         f"class. Received: {root!r}")
    sounds = [s for s in sounds if s["class"] in with_photo]
    groups = {c: groups.get(c, c) for c in sorted(with_photo)}
    return PhotoSet(root, groups, photos, sounds)


def photo_folds(photo_set: PhotoSet, num_folds: int) -> list[dict[str, list[str]]]:
    """Leave-photos-out folds: every class's photos and recordings in one fold.

    Classes are dealt to folds so that each fold holds as many groups as
    possible (a mosaic needs tiles of distinct groups), largest groups first.
    A fold's validation uses only its photos and recordings; its training
    never sees them (`split_photo_set`). Returns, per fold, the photo files,
    the recording files and the recordings' sources.
    """
    classes = sorted({p["class"] for p in photo_set.photos})
    if not 2 <= num_folds <= len(classes):
        raise ValueError(f"folds must lie in [2, {len(classes)}] (the number of classes "
                         f"with photos). Received: folds={num_folds}")
    by_group: dict[str, list[str]] = collections.defaultdict(list)
    for name in classes:
        by_group[photo_set.groups[name]].append(name)
    order = [c for g in sorted(by_group, key=lambda g: (-len(by_group[g]), g))
             for c in by_group[g]]
    count = collections.Counter(p["class"] for p in photo_set.photos)
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    for name in order:
        def cost(k: int) -> tuple[int, int, int]:
            clash = any(photo_set.groups[c] == photo_set.groups[name] for c in folds[k])
            return (int(clash), sum(count[c] for c in folds[k]), k)
        folds[min(range(num_folds), key=cost)].append(name)
    return [{"classes": sorted(f),
             "photos": sorted(p["file"] for p in photo_set.photos if p["class"] in f),
             "sounds": sorted(s["file"] for s in photo_set.sounds if s["class"] in f),
             "sources": sorted(s["source"] for s in photo_set.sounds if s["class"] in f)}
            for f in folds]


def split_photo_set(photo_set: PhotoSet, fold: dict[str, list[str]], split: str) -> PhotoSet:
    """The fold's own photos and recordings ("validation") or all the others ("train")."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received: split={split!r}")
    held = set(fold["photos"]) | set(fold["sounds"])
    keep = (lambda f: f in held) if split == "validation" else (lambda f: f not in held)
    return dataclasses.replace(photo_set,
                               photos=[p for p in photo_set.photos if keep(p["file"])],
                               sounds=[s for s in photo_set.sounds if keep(s["file"])
                                       and (split == "validation"
                                            or s["source"] not in set(fold["sources"]))])


def training_pairs(photo_set: PhotoSet, fold: dict[str, list[str]],
                   stamps: StampSet | None = None) -> dict[str, list[str]]:
    """Per validation class of a fold, the classes of its sound group that the fold's
    training shows with a recording of their own (the class itself among them, if so).

    Folds hold out photos and recordings, not classes: a class's cut-outs may train, but
    only with a recording that is not held out. A class with no such pair, not even in its
    group, can be found only through what the pretrained towers already share. `stamps`
    must be loaded with the fold's sources excluded, as its training loads them.
    """
    train = split_photo_set(photo_set, fold, "train")
    paired = {p["class"] for p in train.photos} & {s["class"] for s in train.sounds}
    groups = dict(photo_set.groups)
    if stamps is not None:
        paired |= set(stamps.classes)  # a stamps class has cut-outs and recordings
        groups = {**stamps.groups, **groups}
    return {name: sorted(c for c in paired if groups.get(c, c) == groups.get(name, name))
            for name in fold["classes"]}


def square_photo(image: np.ndarray, boxes: list[list[float]], size: int,
            rng: np.random.Generator | None) -> tuple[np.ndarray, list[list[float]]]:
    """The photo squeezed to size x size, after a random crop when `rng` is given.

    The crop keeps 70-100% of each side and at least half of the first box,
    so the sounding thing stays in the picture.
    """
    from PIL import Image

    h, w = image.shape[:2]
    x1, y1, x2, y2 = 0.0, 0.0, 1.0, 1.0
    if rng is not None:
        for _ in range(PLACEMENT_TRIES):
            cw, ch = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)
            cx, cy = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
            b = boxes[0]
            inter = (max(min(b[2], cx + cw) - max(b[0], cx), 0)
                     * max(min(b[3], cy + ch) - max(b[1], cy), 0))
            if inter >= 0.5 * (b[2] - b[0]) * (b[3] - b[1]):
                x1, y1, x2, y2 = cx, cy, cx + cw, cy + ch
                break
    crop = image[int(round(y1 * h)):int(round(y2 * h)), int(round(x1 * w)):int(round(x2 * w))]
    out = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    moved = []
    for b in boxes:
        nb = [min(max((b[0] - x1) / (x2 - x1), 0), 1), min(max((b[1] - y1) / (y2 - y1), 0), 1),
              min(max((b[2] - x1) / (x2 - x1), 0), 1), min(max((b[3] - y1) / (y2 - y1), 0), 1)]
        if nb[2] - nb[0] > 0.01 and nb[3] - nb[1] > 0.01:
            moved.append(nb)
    return out, moved


def loop_to(recording: np.ndarray, num_samples: int) -> np.ndarray:
    """A recording repeated to the clip length (a short call fills the whole clip)."""
    reps = int(math.ceil(num_samples / max(recording.shape[0], 1)))
    return np.tile(recording, reps)[:num_samples].astype(np.float32)


def compose_mosaic(photo_set: PhotoSet, rng: np.random.Generator, size: int, num_samples: int,
                   grid: int = 2, augment: bool = True,
                   categories: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A grid x grid mosaic of whole photos of distinct groups; one tile sounds.

    The ground truth is the sounding tile (the multi-source set-up of the
    literature: the other tiles are real photos of other sources). Also
    returns every tile's box and class, and the sounding tile's index, so a
    caller can pair the mosaic with another tile's sound. With `categories`
    (class -> category) every tile is of one category, drawn among those with
    photos of enough groups: the pretrained towers alone cannot tell its tiles
    apart by category, so only the sound can.
    """
    by_group: dict[str, list[dict]] = collections.defaultdict(list)
    for photo in photo_set.photos:
        by_group[photo_set.groups[photo["class"]]].append(photo)
    sounds_of: dict[str, list[dict]] = collections.defaultdict(list)
    for sound in photo_set.sounds:
        sounds_of[sound["class"]].append(sound)
    tiles = grid * grid
    names = sorted(by_group)
    if categories is not None:
        of_category: dict[str, list[str]] = collections.defaultdict(list)
        for name in names:
            of_category[_group_category([p["class"] for p in by_group[name]],
                                        categories)].append(name)
        eligible = sorted(c for c, groups in of_category.items() if len(groups) >= tiles)
        if not eligible:
            raise ValueError(f"a {grid}x{grid} mosaic of one category needs photos of {tiles} "
                             f"groups of a category. Received: "
                             f"{ {c: len(g) for c, g in sorted(of_category.items())} }")
        names = of_category[eligible[rng.integers(len(eligible))]]
    if len(names) < tiles:
        raise ValueError(f"a {grid}x{grid} mosaic needs photos of {tiles} groups. Received: "
                         f"{len(names)} group(s) {names}")
    chosen = [by_group[names[g]][rng.integers(len(by_group[names[g]]))]
              for g in rng.choice(len(names), size=tiles, replace=False)]
    side = size // grid
    canvas = np.zeros([side * grid, side * grid, 3], np.uint8)
    tile_boxes = []
    for t, photo in enumerate(chosen):
        row, col = divmod(t, grid)
        tile, _ = square_photo(photo["image"], photo["boxes"], side, rng if augment else None)
        canvas[row * side:(row + 1) * side, col * side:(col + 1) * side] = tile
        tile_boxes.append([col / grid, row / grid, (col + 1) / grid, (row + 1) / grid])
    sounding = int(rng.integers(tiles))
    options = sounds_of[chosen[sounding]["class"]]
    sound = options[rng.integers(len(options))]
    return {"image": canvas, "waveform": loop_to(sound["waveform"], num_samples),
            "box": tile_boxes[sounding], "tile_boxes": tile_boxes,
            "classes": [p["class"] for p in chosen], "photos": [p["file"] for p in chosen],
            "sounding": sounding, "sound": sound["file"]}


def compose_photo(photo_set: PhotoSet, rng: np.random.Generator, size: int, num_samples: int,
                  index: int, augment: bool = True) -> dict[str, Any]:
    """One whole photo with a recording of its class; its boxes are the ground truth.

    Without `augment`, pairs are enumerated in order (photo, then recording),
    so `count` = the number of pairs evaluates each exactly once.
    """
    pairs = [(p, s) for p in photo_set.photos for s in photo_set.sounds
             if s["class"] == p["class"]]
    photo, sound = (pairs[rng.integers(len(pairs))] if augment else pairs[index % len(pairs)])
    image, boxes = square_photo(photo["image"], photo["boxes"], size, rng if augment else None)
    return {"image": image, "waveform": loop_to(sound["waveform"], num_samples),
            "boxes": boxes, "class": photo["class"], "photos": [photo["file"]],
            "sound": sound["file"]}


def photo_samples(root: str, fmt: str, sample_rate: int, num_samples: int,
                  report: ImportReport, count: int, image_size: int = 256, seed: int = 0,
                  label_fraction: float = 1.0, folds: int = 0, fold: int = 0,
                  split: str = "train", grid: int = 2, progress: TextIO | None = None,
                  photo_set: PhotoSet | None = None) -> Iterator[Sample]:
    """`mosaics` or `photos` samples of one split of one fold (or of every photo).

    The training split is augmented (random crops); the validation split is
    not, and never contains a training photo or recording.
    """
    photo_set = photo_set or load_photo_set(root, sample_rate, report, progress)
    classes = sorted(photo_set.groups)
    if folds:
        if not 0 <= fold < folds:
            raise ValueError(f"fold must lie in [0, folds). Received: fold={fold}, "
                             f"folds={folds}")
        photo_set = split_photo_set(photo_set, photo_folds(photo_set, folds)[fold], split)
        report.notes[f"fold {fold} of {folds}, {split}: photos"] = len(photo_set.photos)
        report.notes[f"fold {fold} of {folds}, {split}: recordings"] = len(photo_set.sounds)
    augment = split == "train"
    for index in track(range(count), fmt, progress):
        rng = np.random.default_rng([seed, index])
        if fmt == "mosaics":
            scene = compose_mosaic(photo_set, rng, image_size, num_samples, grid, augment)
            boxes, source_class = [[scene["box"]]], scene["classes"][scene["sounding"]]
        else:
            scene = compose_photo(photo_set, rng, image_size, num_samples, index, augment)
            boxes, source_class = [scene["boxes"]], scene["class"]
        labeled = bool(np.random.default_rng([seed, index, 1]).uniform() < label_fraction)
        report.imported += 1
        yield {"image": records.encode_image(scene["image"], "jpeg"),
               "waveform": scene["waveform"], "sample_rate": sample_rate, "boxes": boxes,
               "labeled": labeled, "class_id": classes.index(source_class),
               "id": f"{fmt}/{seed}/{index}"}


# ---------------------------------------------------------------------------
# Driver.


def run_import(fmt: str, source: str, output: str, *, sample_rate: int, clip_seconds: float,
               samples_per_shard: int = 1000, progress: TextIO | None = None,
               report: ImportReport | None = None,
               **options: Any) -> tuple[ImportReport, records.WriteSummary]:
    """Imports `source` in format `fmt` into the record directory `output`.

    Pass your own `report` to see what was skipped when the import fails as a
    whole (e.g. every item was unusable, so there is nothing to write).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}. Received: format={fmt!r}")
    if not os.path.exists(source):
        raise ValueError(f"the input does not exist. Received: {source!r}")
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must lie in (0, {MAX_SAMPLE_RATE}] Hz. Received: "
                         f"sample_rate={sample_rate}")
    if not (math.isfinite(clip_seconds) and 0 < clip_seconds <= MAX_CLIP_SECONDS):
        raise ValueError(f"clip_seconds must be a finite number in (0, {MAX_CLIP_SECONDS:g}] "
                         f"seconds. Received: clip_seconds={clip_seconds}")
    pairs_per_clip = options.get("pairs_per_clip", 1)
    if not 1 <= pairs_per_clip <= MAX_PAIRS_PER_CLIP:
        raise ValueError(f"pairs_per_clip must lie in [1, {MAX_PAIRS_PER_CLIP}] (the pairs of "
                         f"a video are decoded together). Received: "
                         f"pairs_per_clip={pairs_per_clip}")
    num_samples = int(round(sample_rate * clip_seconds))
    _check_fold_options(fmt, options)
    report = report if report is not None else ImportReport(fmt)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if fmt == "flickr":
        ids = read_id_list(options["ids"]) if options.get("ids") else None
        samples = flickr_samples(source, ids, sample_rate, num_samples, report,
                                 options.get("require_annotation", False), progress)
    elif fmt == "vggss":
        samples = vggss_samples(source, sample_rate, num_samples, report,
                                options.get("annotation"), progress)
    elif fmt == "avsbench_s4":
        samples = avsbench_samples(source, sample_rate, num_samples, report, progress)
    elif fmt == "videos":
        samples = video_samples(source, sample_rate, num_samples, report, pairs_per_clip,
                                progress)
    elif fmt in ("mosaics", "photos"):
        photo_set = load_photo_set(source, sample_rate, report, progress)
        extra["classes"] = sorted(photo_set.groups)
        extra["groups"] = photo_set.groups
        if options.get("folds"):
            extra["fold"] = {"folds": options["folds"], "fold": options.get("fold", 0),
                             "split": options.get("split", "train"),
                             **photo_folds(photo_set, options["folds"])[options.get("fold", 0)]}
        samples = photo_samples(source, fmt, sample_rate, num_samples, report,
                                options.get("count", 1000), options.get("image_size", 256),
                                options.get("seed", 0), options.get("label_fraction", 1.0),
                                options.get("folds", 0), options.get("fold", 0),
                                options.get("split", "train"), options.get("grid", 2),
                                progress, photo_set)
    else:
        excluded: list[str] = []
        if options.get("holdout_photos"):
            # Leave out the recordings a photos fold validates on, wherever they reappear.
            photos = load_photo_set(options["holdout_photos"], sample_rate,
                                    ImportReport("photos"))
            excluded = photo_folds(photos, options["folds"])[options.get("fold", 0)]["sources"]
            extra["held_out_sources"] = excluded
        stamps = load_stamps(source, sample_rate, report, progress, excluded)
        extra["classes"] = stamps.classes
        extra["groups"] = stamps.groups
        samples = composite_samples(source, sample_rate, num_samples, report,
                                    options.get("count", 1000), options.get("image_size", 256),
                                    options.get("seed", 0), options.get("label_fraction", 1.0),
                                    options.get("max_objects", 3), progress, stamps,
                                    options.get("blend_edges", False))

    def counted() -> Iterator[Sample]:
        yield from samples
        report.seconds = time.perf_counter() - started

    summary = _write_with_report(counted(), output, report, sample_rate, clip_seconds, fmt,
                                 samples_per_shard, extra)
    return report, summary


def _check_fold_options(fmt: str, options: dict[str, Any]) -> None:
    folds, fold = options.get("folds", 0) or 0, options.get("fold", 0) or 0
    if options.get("holdout_photos") and fmt != "composites":
        raise ValueError(f"holdout_photos applies to format='composites'. Received: "
                         f"format={fmt!r}")
    if options.get("holdout_photos") and not folds:
        raise ValueError("holdout_photos needs folds >= 2 (and fold) to know which recordings "
                         "are held out. Received: folds=0")
    if folds and not 0 <= fold < folds:
        raise ValueError(f"fold must lie in [0, folds). Received: fold={fold}, folds={folds}")
    if options.get("split", "train") not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received: "
                         f"split={options.get('split')!r}")
    if fmt == "mosaics" and not 2 <= options.get("grid", 2) <= 4:
        raise ValueError(f"grid must lie in [2, 4]. Received: grid={options.get('grid')}")


def _write_with_report(samples: Iterable[Sample], output: str, report: ImportReport,
                       sample_rate: int, clip_seconds: float, fmt: str, samples_per_shard: int,
                       extra: dict) -> records.WriteSummary:
    # The report is final only once the samples are exhausted: pass it as a callable.
    return records.write_records(samples, output, sample_rate=sample_rate,
                                 clip_seconds=clip_seconds, source=fmt,
                                 samples_per_shard=samples_per_shard,
                                 extra=lambda: {**extra, "import": report.as_dict()})
