"""One input of an import -> its samples, through the importers' own functions.

`importers.video_samples`, `composite_samples` and `photo_samples` are generators over a
whole folder that hold the loop's state (the ids seen, the report). A pipeline needs the
loop's input as a list and its body as a function of one item: `prepare` lists the items
and loads what every item reads (the stamps, the photo set), `samples_of` turns one item
into its samples with the importers' decoding and composing functions. A pipeline and
`importers.run_import` then store the same samples (tests/test_beam.py compares them byte
for byte), and the body is small enough to read against the generator it mirrors.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from soundloc_tf.dataloaders import importers, records

# The formats whose items are independent: a video, or a scene index drawn from its own
# seeded stream. flickr, vggss and avsbench_s4 run without --runner for now.
BEAM_FORMATS = ("videos", "composites", "mosaics", "photos")


@dataclasses.dataclass(frozen=True)
class ImportSettings:
    """What one import was asked for: `importers.run_import`'s arguments.

    Attributes:
      fmt: one of BEAM_FORMATS.
      source: the input folder.
      sample_rate: the stored audio rate (Hz).
      clip_seconds: the stored audio length per sample.
      options: the format's options, as `run_import` takes them (pairs_per_clip, count,
        seed, folds, ...).
    """

    fmt: str
    source: str
    sample_rate: int
    clip_seconds: float
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


@dataclasses.dataclass
class Prepared:
    """An import's items and what each item reads.

    Attributes:
      items: (index, path, skip reason or None) per input, in the single process's order.
      context: the stamps (composites), the split photo set (mosaics, photos), or None.
      extra: the manifest's `extra` besides the report (classes, groups, fold).
    """

    items: list[tuple[int, str, str | None]]
    context: Any
    extra: dict[str, Any]


def check_settings(settings: ImportSettings) -> None:
    """The checks `importers.run_import` makes before any work, with its messages."""
    if settings.fmt not in BEAM_FORMATS:
        raise ValueError(f"a Beam import takes format {' / '.join(BEAM_FORMATS)} (run the "
                         f"others without --runner). Received: format={settings.fmt!r}")
    if not os.path.exists(settings.source):
        raise ValueError(f"the input does not exist. Received: {settings.source!r}")
    if not 0 < settings.sample_rate <= importers.MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must lie in (0, {importers.MAX_SAMPLE_RATE}] Hz. "
                         f"Received: sample_rate={settings.sample_rate}")
    if not (math.isfinite(settings.clip_seconds)
            and 0 < settings.clip_seconds <= importers.MAX_CLIP_SECONDS):
        raise ValueError(f"clip_seconds must be a finite number in (0, "
                         f"{importers.MAX_CLIP_SECONDS:g}] seconds. Received: "
                         f"clip_seconds={settings.clip_seconds}")
    pairs = settings.option("pairs_per_clip", 1)
    if not 1 <= pairs <= importers.MAX_PAIRS_PER_CLIP:
        raise ValueError(f"pairs_per_clip must lie in [1, {importers.MAX_PAIRS_PER_CLIP}] "
                         f"(the pairs of a video are decoded together). Received: "
                         f"pairs_per_clip={pairs}")
    importers._check_fold_options(settings.fmt, settings.options)


def prepare(settings: ImportSettings, report: importers.ImportReport) -> Prepared:
    """Lists the items and loads their context; what that skips goes into `report`.

    The launcher calls it once with the import's report; each worker calls
    `load_context` again with a report of its own, so nothing large crosses the pipeline.
    """
    if settings.fmt == "videos":
        return Prepared(list_videos(settings.source), None, {})
    context, extra = load_context(settings, report)
    if settings.fmt == "composites":
        report.notes["classes"] = len(context.classes)
        extra.update(classes=context.classes, groups=context.groups)
    count = settings.option("count", 1000)
    return Prepared([(index, settings.source, None) for index in range(count)], context, extra)


def list_videos(root: str) -> list[tuple[int, str, str | None]]:
    """`video_samples`' inputs: every video under `root`, sorted, a repeated stem (the same
    name with another extension) marked with the reason it gives."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(importers.VIDEO_EXTENSIONS))
    if not paths:
        raise ValueError(f"no videos ({', '.join(importers.VIDEO_EXTENSIONS)}) under the "
                         f"folder. Received: {root!r}")
    items, seen = [], set()
    for index, path in enumerate(paths):
        stem = video_stem(root, path)
        duplicate = f"duplicate id: {stem} (same name, other extension)" if stem in seen else None
        seen.add(stem)
        items.append((index, path, duplicate))
    return items


def video_stem(root: str, path: str) -> str:
    return os.path.splitext(os.path.relpath(path, root))[0]


def load_context(settings: ImportSettings, report: importers.ImportReport
                 ) -> tuple[Any, dict[str, Any]]:
    """The stamps or the photo set every scene draws from, and the manifest's extra."""
    rate, options, extra = settings.sample_rate, settings.options, {}
    if settings.fmt == "composites":
        excluded: list[str] = []
        if options.get("holdout_photos"):
            # Leave out the recordings a photos fold validates on, wherever they reappear.
            photos = importers.load_photo_set(options["holdout_photos"], rate,
                                              importers.ImportReport("photos"))
            excluded = importers.photo_folds(photos, options["folds"])[
                options.get("fold", 0)]["sources"]
            extra["held_out_sources"] = excluded
        return importers.load_stamps(settings.source, rate, report, None, excluded), extra
    photo_set = importers.load_photo_set(settings.source, rate, report, None)
    extra.update(classes=sorted(photo_set.groups), groups=photo_set.groups)
    folds, fold = options.get("folds", 0), options.get("fold", 0)
    if folds:
        split = options.get("split", "train")
        held = importers.photo_folds(photo_set, folds)[fold]
        extra["fold"] = {"folds": folds, "fold": fold, "split": split, **held}
        # The split keeps every class's group, so class ids still number the whole folder.
        photo_set = importers.split_photo_set(photo_set, held, split)
        report.notes[f"fold {fold} of {folds}, {split}: photos"] = len(photo_set.photos)
        report.notes[f"fold {fold} of {folds}, {split}: recordings"] = len(photo_set.sounds)
    return photo_set, extra


def samples_of(settings: ImportSettings, context: Any, item: tuple[int, str, str | None]
               ) -> list[dict[str, Any]]:
    """One item's samples, as the importer's generator yields them.

    Raises:
      importers.SkipItem: the item is unusable; its message is the reason.
    """
    index, path, skip = item
    if skip is not None:
        raise importers.SkipItem(skip)
    if settings.fmt == "videos":
        return _video(settings, path)
    seed = settings.option("seed", 0)
    rng = np.random.default_rng([seed, index])
    size = settings.option("image_size", 256)
    if settings.fmt == "composites":
        scene = importers.compose_scene(context, rng, size, settings.num_samples,
                                        max_objects=settings.option("max_objects", 3),
                                        blend_edges=settings.option("blend_edges", False))
        boxes, class_id = [[scene["box"]]], context.classes.index(scene["class"])
    elif settings.fmt == "mosaics":
        scene = importers.compose_mosaic(context, rng, size, settings.num_samples,
                                         settings.option("grid", 2), _augment(settings))
        boxes = [[scene["box"]]]
        class_id = sorted(context.groups).index(scene["classes"][scene["sounding"]])
    else:
        scene = importers.compose_photo(context, rng, size, settings.num_samples, index,
                                        _augment(settings))
        boxes, class_id = [scene["boxes"]], sorted(context.groups).index(scene["class"])
    labeled = bool(np.random.default_rng([seed, index, 1]).uniform()
                   < settings.option("label_fraction", 1.0))
    name = "composite" if settings.fmt == "composites" else settings.fmt
    return [{"image": records.encode_image(scene["image"], "jpeg"),
             "waveform": scene["waveform"], "sample_rate": settings.sample_rate,
             "boxes": boxes, "labeled": labeled, "class_id": class_id,
             "id": f"{name}/{seed}/{index}"}]


def _augment(settings: ImportSettings) -> bool:
    return settings.option("split", "train") == "train"


def _video(settings: ImportSettings, path: str) -> list[dict[str, Any]]:
    pairs = importers.clip_pairs(path, settings.sample_rate, settings.num_samples,
                                 settings.option("pairs_per_clip", 1))
    stem = video_stem(settings.source, path)
    return [{"image": records.encode_image(frame, "jpeg"), "waveform": window,
             "sample_rate": settings.sample_rate, "boxes": [], "labeled": False,
             "class_id": -1, "id": f"{stem}@{t:.2f}"} for t, frame, window in pairs]
