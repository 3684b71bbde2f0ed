"""`soundloc-import --runner=...`: an import as an Apache Beam pipeline.

  items (launcher) -> Reshuffle -> samples per item (workers, the importers' functions)
    -> serialized examples keyed by shard -> one part per shard (workers)
    -> every part and every skip gathered -> renamed shards, then the manifest (one worker)

A sample's shard and place in it come from its position in the single process's stream
as if nothing before it were skipped (item index x pairs per item + pair), so without
skips the shards hold what `importers.run_import` writes, in its order; a skip only makes
its shard shorter. Skips leave the workers as a side output with their item's index and
come back in the single process's order, so the manifest's import report lists the same
skips with the same reasons; Beam counters (`soundloc_import`: imported, skipped) show the
progress in the runner's monitoring. The manifest is written only after the last part
(tests/test_beam.py kills a run halfway and reruns it).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from soundloc_tf.dataloaders import importers, records
from soundloc_tf.pipelines import elements, shards

SKIPS = "skips"
PREFIX = "data"


class ImportItems(beam.DoFn):
    """An item -> (shard key, (position, serialized example, labeled)); skips tagged SKIPS.

    The stamps or the photo set are loaded once per worker, in `setup`.
    """

    def __init__(self, settings: elements.ImportSettings, samples_per_shard: int):
        self.settings, self.samples_per_shard = settings, samples_per_shard
        self.pairs = settings.option("pairs_per_clip", 1) if settings.fmt == "videos" else 1
        self.imported = beam.metrics.Metrics.counter("soundloc_import", "imported")
        self.skipped = beam.metrics.Metrics.counter("soundloc_import", "skipped")

    def setup(self) -> None:
        self.context = None
        if self.settings.fmt != "videos":
            # This worker's own copy; the launcher's report already holds what it skips.
            self.context, _ = elements.load_context(self.settings,
                                                    importers.ImportReport(self.settings.fmt))

    def process(self, item: tuple[int, str, str | None]) -> Iterator[Any]:
        index, path, _ = item
        try:
            samples = elements.samples_of(self.settings, self.context, item)
        except importers.SkipItem as skip:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPS, (index, path, str(skip)))
            return
        for pair, sample in enumerate(samples):
            position = index * self.pairs + pair
            example = records.make_example(sample)
            labeled = int(example.features.feature["labeled"].int64_list.value[0])
            self.imported.inc()
            # Map fields in key order: a retried bundle rewrites a part with the same bytes.
            serialized = example.SerializeToString(deterministic=True)
            yield position // self.samples_per_shard, (position, serialized, labeled)


class WriteParts(beam.DoFn):
    """(shard key, its examples) -> the part's manifest entry with its labeled count."""

    def __init__(self, output: str, prefix: str):
        self.output, self.prefix = output, prefix

    def process(self, keyed: tuple[int, Iterable[tuple[int, bytes, int]]]
                ) -> Iterator[dict[str, Any]]:
        key, values = keyed
        ordered = sorted(values, key=lambda value: value[0])
        entry = shards.write_part((v[1] for v in ordered), self.output, self.prefix, key)
        yield {**entry, "labeled": sum(v[2] for v in ordered)}


def commit_import(parts: list[dict[str, Any]], skips: list[tuple[int, str, str]], *,
                  settings: elements.ImportSettings, output: str,
                  launcher_report: importers.ImportReport, extra: dict[str, Any],
                  started: float) -> dict[str, Any]:
    """Every part and skip -> the shards renamed, then the manifest, as `write_records`
    writes it; returns the manifest. Nothing imported writes nothing and raises."""
    if not parts:
        raise ValueError(f"no samples to write. Received: directory={output!r}")
    report = importers.ImportReport(settings.fmt)
    report.skipped = list(launcher_report.skipped) + [(p, r) for _, p, r in sorted(skips)]
    report.notes = collections.Counter(launcher_report.notes)
    report.imported = sum(part["count"] for part in parts)
    entries = shards.commit_parts(output, parts, PREFIX)
    report.seconds = time.time() - started
    manifest = {
        "format": records.FORMAT_NAME,
        "version": records.FORMAT_VERSION,
        "source": settings.fmt,
        "count": report.imported,
        "labeled": sum(part["labeled"] for part in parts),
        "features": {"sample_rate": int(settings.sample_rate),
                     "clip_seconds": float(settings.clip_seconds), "audio_dtype": "int16",
                     "boxes": "normalised x1,y1,x2,y2 per annotator"},
        "shards": entries,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra": {**extra, "import": report.as_dict()},
    }
    records._atomic_write_text(os.path.join(output, records.MANIFEST),
                               json.dumps(manifest, indent=1))
    return manifest


def run_beam_import(settings: elements.ImportSettings, output: str, pipeline_args: list[str],
                    samples_per_shard: int = 1000
                    ) -> tuple[importers.ImportReport, records.WriteSummary]:
    """Imports as `importers.run_import` does, as a Beam pipeline on `pipeline_args`' runner.

    Args:
      settings: the format, input folder, audio and format options.
      output: the record directory: local, or a file system every worker mounts.
      pipeline_args: Beam's options, e.g. ["--runner=DirectRunner",
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"].
      samples_per_shard: records per shard (fewer where items were skipped).

    Returns:
      The import report and the write summary, as `run_import` returns them.
    """
    elements.check_settings(settings)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1. Received: "
                         f"samples_per_shard={samples_per_shard}")
    os.makedirs(output, exist_ok=True)
    cleared = shards.clear_leftovers(output, PREFIX)
    started = time.time()
    report = importers.ImportReport(settings.fmt)
    prepared = elements.prepare(settings, report)
    if cleared:
        logging.warning("removed %d file(s) an interrupted run left in %s: %s", len(cleared),
                        output, ", ".join(cleared[:5]))
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        imported = (pipeline
                    | "List" >> beam.Create(prepared.items)
                    | "Spread" >> beam.Reshuffle()
                    | "Import" >> beam.ParDo(ImportItems(settings, samples_per_shard))
                    .with_outputs(SKIPS, main="examples"))
        skips = imported[SKIPS] | "Skips" >> beam.combiners.ToList()
        _ = (imported["examples"]
             | "ByShard" >> beam.GroupByKey()
             | "Write" >> beam.ParDo(WriteParts(output, PREFIX))
             | "Parts" >> beam.combiners.ToList()
             | "Commit" >> beam.Map(commit_import, skips=beam.pvalue.AsSingleton(skips),
                                    settings=settings, output=output,
                                    launcher_report=report, extra=prepared.extra,
                                    started=started))
    manifest = records.load_manifest(output)
    return report_of(manifest), records.WriteSummary(
        output, manifest["count"], manifest["labeled"],
        [s["file"] for s in manifest["shards"]], sum(s["bytes"] for s in manifest["shards"]),
        time.time() - started)


def report_of(manifest: dict[str, Any]) -> importers.ImportReport:
    """The import report a manifest stores (`ImportReport.as_dict`), as an ImportReport."""
    stored = manifest["extra"]["import"]
    return importers.ImportReport(
        stored["format"], stored["imported"],
        [(item["path"], item["reason"]) for item in stored["skipped_items"]],
        collections.Counter(stored["notes"]), stored["seconds"])
