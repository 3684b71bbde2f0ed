"""The annotation layer: atomic, conflict-checked saves, and training on exactly its labels.

No label may be lost: a save over a newer label is refused, saves of other pairs
from other writers merge, a corrupt file is never replaced, and a save that
crashes (a failing fsync, or a process killed at a random moment) leaves the
earlier labels readable.  The records reader, given the layer, marks exactly
its pairs with boxes as labelled, with its boxes.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf.dataloaders import annotations, records
from soundloc_tf.config import get_config

ROOT = Path(__file__).resolve().parent.parent
TINY = get_config("tiny")
BOX = [0.1, 0.2, 0.6, 0.7]


def _save(path, sample_id, boxes=(BOX,), no_source=False, by="ana", revision=0):
    return annotations.save_label(str(path), sample_id, [list(b) for b in boxes], no_source,
                                  by, revision)


def test_save_then_load_keeps_boxes_author_and_time(tmp_path):
    path = tmp_path / "annotations.json"
    assert annotations.load(str(path))["labels"] == {}  # no file yet: nothing labelled
    label = _save(path, "a@0.50", boxes=[BOX, [0.5, 0.5, 1.0, 1.0]])
    assert label["revision"] == 1 and label["by"] == "ana"
    assert time.time() - time.mktime(time.strptime(label["at"], "%Y-%m-%dT%H:%M:%SZ")) \
        < 24 * 3600 + 60
    second = _save(path, "a@0.50", boxes=[], no_source=True, by="bo", revision=1)
    assert second["revision"] == 2
    stored = json.loads(path.read_text())
    assert stored["format"] == "soundloc-annotations" and stored["version"] == 1
    assert stored["labels"]["a@0.50"] == second
    assert annotations.is_labelled(second)
    cleared = _save(path, "a@0.50", boxes=[], revision=2)
    assert not annotations.is_labelled(cleared) and cleared["revision"] == 3
    # No temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json",
                                                          "annotations.json.lock"]


@pytest.mark.parametrize("boxes, no_source, fragment", [
    ([[0.5, 0.1, 0.2, 0.9]], False, "x1 < x2"),
    ([[0.1, 0.1, 1.5, 0.9]], False, "normalised to [0, 1]"),
    ([[0.1, 0.1, 0.2]], False, "4 finite numbers"),
    ([[0.1, 0.1, float("nan"), 0.2]], False, "4 finite numbers"),
    ([BOX] * 5, False, "at most 4 boxes"),
    ([BOX], True, "'no visible source' has no boxes"),
    ([BOX], "yes", "no_source must be true or false"),
])
def test_invalid_labels_are_refused_and_nothing_is_written(tmp_path, boxes, no_source, fragment):
    path = tmp_path / "annotations.json"
    with pytest.raises(ValueError, match="Received") as error:
        annotations.save_label(str(path), "a", boxes, no_source, "ana", 0)
    assert fragment in str(error.value)
    assert not path.exists()


def test_a_stale_revision_is_refused_and_the_newer_label_kept(tmp_path):
    path = tmp_path / "annotations.json"
    _save(path, "a", boxes=[BOX], by="tab-one")
    with pytest.raises(annotations.RevisionConflict) as conflict:
        _save(path, "a", boxes=[[0.0, 0.0, 0.3, 0.3]], by="tab-two", revision=0)
    assert conflict.value.current["by"] == "tab-one" and conflict.value.current["revision"] == 1
    assert "revision 1 by 'tab-one'" in str(conflict.value)
    assert annotations.load(str(path))["labels"]["a"]["boxes"] == [BOX]


def test_concurrent_writers_of_different_pairs_lose_nothing(tmp_path):
    """Eight threads and two processes save 12 pairs each, all at once: all 120 survive."""
    path = tmp_path / "annotations.json"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from soundloc_tf.dataloaders import annotations\n"
              "for i in range(12):\n"
              f"    annotations.save_label({str(path)!r}, f'p{{sys.argv[1]}}-{{i}}', "
              "[[0.1, 0.1, 0.5, 0.5]], False, 'proc', 0)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)]) for k in range(2)]
    errors = []

    def writer(k):
        try:
            for i in range(12):
                _save(path, f"t{k}-{i}", by=f"thread{k}")
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert errors == []
    labels = annotations.load(str(path))["labels"]
    assert len(labels) == 8 * 12 + 2 * 12
    assert all(label["revision"] == 1 for label in labels.values())


def test_a_corrupt_file_is_reported_and_never_replaced(tmp_path):
    path = tmp_path / "annotations.json"
    _save(path, "a")
    corrupt = path.read_bytes()[:-20]  # cut short, as by a tool that crashed while copying
    path.write_bytes(corrupt)
    with pytest.raises(annotations.CorruptAnnotationsError, match="corrupt annotation file"):
        annotations.load(str(path))
    with pytest.raises(annotations.CorruptAnnotationsError, match="kept as it is"):
        _save(path, "b")
    assert path.read_bytes() == corrupt  # byte for byte: the label of "a" can be recovered
    path.write_text(json.dumps({"format": "something-else", "labels": {}}))
    with pytest.raises(annotations.CorruptAnnotationsError, match="not a soundloc-annotations"):
        annotations.load(str(path))
    path.write_text(json.dumps({"format": "soundloc-annotations", "version": 1,
                                "labels": {"a": {"boxes": [[0.9, 0, 0.1, 1]], "no_source": False,
                                                 "revision": 1, "by": "x", "at": "t"}}}))
    with pytest.raises(annotations.CorruptAnnotationsError, match="the label of 'a' is invalid"):
        annotations.load(str(path))


def test_a_save_that_fails_midway_keeps_the_earlier_labels(tmp_path, monkeypatch):
    path = tmp_path / "annotations.json"
    _save(path, "a")
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(path, "b")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_killed_savers_never_leave_a_half_written_file(tmp_path):
    """A process saving in a loop is SIGKILLed at varied moments; after each kill the file
    parses and holds every label saved before the loop started."""
    path = tmp_path / "annotations.json"
    for i in range(20):
        _save(path, f"earlier-{i}", boxes=[[0.0, 0.0, 0.05 * (i + 1), 0.5]])
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from soundloc_tf.dataloaders import annotations\n"
              "print('ready', flush=True)\n"
              # Resumes from the file: a kill between two saves leaves consistent revisions.
              f"rev = {{k: v['revision'] for k, v in annotations.load({str(path)!r})"
              "['labels'].items()}\n"
              "for i in range(100000):\n"
              "    k = f'loop-{i % 7}'\n"
              f"    label = annotations.save_label({str(path)!r}, k, [[0.1, 0.1, 0.9, 0.9]], "
              "False, 'loop', rev.get(k, 0))\n"
              "    rev[k] = label['revision']\n")
    for delay in (0.05, 0.13, 0.21, 0.34):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        labels = annotations.load(str(path))["labels"]  # raises if half written
        for i in range(20):
            assert labels[f"earlier-{i}"]["boxes"] == [[0.0, 0.0, 0.05 * (i + 1), 0.5]]
    assert sum(labels[f"loop-{k}"]["revision"] for k in range(7) if f"loop-{k}" in labels) > 0


# ---------------------------------------------------------------------------
# Training reads exactly the layer's labels.


def _records(tmp_path, count=6):
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 255, [32, 40, 3], dtype=np.uint8),
                "waveform": rng.normal(0, 0.1, TINY.num_samples).astype(np.float32),
                "sample_rate": TINY.sample_rate, "id": f"clip{i // 2}@{i % 2}.50",
                # The import's own boxes: the layer must replace them, not add to them.
                "boxes": [[[0.0, 0.0, 1.0, 1.0]]] if i == 5 else None}
               for i in range(count)]
    out = tmp_path / "records"
    records.write_records(samples, str(out), sample_rate=TINY.sample_rate,
                          clip_seconds=TINY.clip_seconds, source="test", samples_per_shard=4)
    return out


def test_records_read_with_the_layer_label_exactly_its_pairs(tmp_path):
    out = _records(tmp_path)
    path = out / "annotations.json"
    _save(path, "clip0@0.50", boxes=[[0.25, 0.25, 0.75, 0.5]])
    _save(path, "clip2@1.50", boxes=[[0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5]])
    _save(path, "clip1@0.50", boxes=[], no_source=True)  # labelled, but no target
    _save(path, "clip1@1.50", boxes=[BOX])
    _save(path, "clip1@1.50", boxes=[], revision=1)  # cleared again
    assert records.count_labeled(str(out)) == (1, 6)  # the import's own label
    assert records.count_labeled(str(out), str(path)) == (2, 6)
    seen = {e["id"].numpy().decode(): e for e in
            records.read_records(TINY, str(out), training=False, annotations=str(path))}
    assert len(seen) == 6
    assert sorted(k for k, e in seen.items() if bool(e["labeled"])) == ["clip0@0.50",
                                                                        "clip2@1.50"]
    np.testing.assert_allclose(seen["clip0@0.50"]["boxes"][0, 0], [0.25, 0.25, 0.75, 0.5])
    np.testing.assert_allclose(seen["clip2@1.50"]["boxes"][0, :2],
                               [[0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5]])
    for sample_id in ("clip1@0.50", "clip1@1.50", "clip2@0.50"):  # the import's box is gone
        assert not np.any(seen[sample_id]["boxes"].numpy())
    # Training's augmented stream carries the same labelled pairs.
    stream = records.read_records(TINY, str(out), training=True, repeat=False,
                                  annotations=str(path))
    assert sorted(e["id"].numpy().decode() for e in stream if bool(e["labeled"])) == \
        ["clip0@0.50", "clip2@1.50"]


def test_a_layer_of_other_records_or_a_missing_one_is_refused(tmp_path):
    out = _records(tmp_path)
    with pytest.raises(ValueError, match="no annotation file"):
        records.read_records(TINY, str(out), training=False, annotations=str(out / "nope.json"))
    path = out / "annotations.json"
    _save(path, "someone-else@3.00")
    with pytest.raises(ValueError, match="pairs the records do not hold"):
        records.read_records(TINY, str(out), training=False, annotations=str(path))
