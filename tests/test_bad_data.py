"""Bad data: a corpus of broken inputs, made here, given to the importers and to read_records.

Every broken item must be skipped and reported with its path and reason, the summary's counts
must be exact, geometry faults (boxes outside the image or inverted) are repaired or dropped
and counted as notes, and a record shard with one flipped byte is refused by its sha256
before a single example is read.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from soundloc_tf.dataloaders import importers, records

RATE = 8000
CLIP_SECONDS = 1.0


def _tone(seconds: float = 1.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _jpeg(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _wav(samples: np.ndarray, subtype: str = "PCM_16") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, RATE, subtype=subtype, format="WAV")
    return out.getvalue()


def _mp3(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, RATE, format="MP3")
    return out.getvalue()


def _empty_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"")
    return out.getvalue()


def _xml(boxes_256) -> str:
    parts = ["<annotation>"]
    for annotator, (x1, y1, x2, y2) in enumerate(boxes_256, start=1):
        parts.append(f"<object><bbox><a>{annotator}</a><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bbox></object>")
    return "".join(parts) + "</annotation>"


GOOD_BOX = (40, 40, 200, 200)

# id -> (image file name and bytes, audio file name and bytes, XML text or None,
#        expected reason prefix or None when the item must be imported)
FLICKR_ITEMS = {
    "good1": (("good1.jpg", _jpeg(1)), ("good1.wav", _wav(_tone())), _xml([GOOD_BOX]), None),
    "good2": (("good2.png", _png(2)), ("good2.mp3", _mp3(_tone())), None, None),
    # Geometry faults: imported, the bad boxes clipped or dropped and counted as notes.
    "boxes_outside": (("boxes_outside.jpg", _jpeg(3)), ("boxes_outside.wav", _wav(_tone())),
                      _xml([GOOD_BOX, (300, 300, 400, 400)]), None),
    "boxes_inverted": (("boxes_inverted.jpg", _jpeg(4)), ("boxes_inverted.wav", _wav(_tone())),
                       _xml([GOOD_BOX, (200, 200, 40, 40)]), None),
    "truncated_jpeg": (("truncated_jpeg.jpg", _jpeg(5)[:300]), ("truncated_jpeg.wav",
                                                                _wav(_tone())), None,
                       "corrupt image"),
    "zero_jpeg": (("zero_jpeg.jpg", b""), ("zero_jpeg.wav", _wav(_tone())), None,
                  "corrupt image"),
    "truncated_png": (("truncated_png.png", _png(6)[:200]), ("truncated_png.wav", _wav(_tone())),
                      None, "corrupt image"),
    "zero_png": (("zero_png.png", b""), ("zero_png.wav", _wav(_tone())), None, "corrupt image"),
    "wav_named_jpg": (("wav_named_jpg.jpg", _wav(_tone())), ("wav_named_jpg.wav", _wav(_tone())),
                      None, "corrupt image"),
    "jpg_named_wav": (("jpg_named_wav.jpg", _jpeg(7)), ("jpg_named_wav.wav", _jpeg(7)), None,
                      "unreadable audio"),
    "truncated_wav": (("truncated_wav.jpg", _jpeg(8)), ("truncated_wav.wav", _wav(_tone())[:30]),
                      None, "unreadable audio"),
    "zero_wav": (("zero_wav.jpg", _jpeg(9)), ("zero_wav.wav", b""), None, "unreadable audio"),
    "zero_mp3": (("zero_mp3.jpg", _jpeg(10)), ("zero_mp3.mp3", b""), None, "unreadable audio"),
    "truncated_mp3": (("truncated_mp3.jpg", _jpeg(11)), ("truncated_mp3.mp3",
                                                         _mp3(_tone())[:40]), None, "*audio"),
    "nan_samples": (("nan_samples.jpg", _jpeg(12)),
                    ("nan_samples.wav", _wav(np.where(np.arange(int(1.5 * RATE)) == 100, np.nan,
                                                      _tone()).astype(np.float32), "FLOAT")),
                    None, "unreadable audio"),
    "zero_seconds": (("zero_seconds.jpg", _jpeg(13)), ("zero_seconds.wav", _empty_wav()), None,
                     "*audio"),
    "silent": (("silent.jpg", _jpeg(14)), ("silent.wav", _wav(np.zeros(RATE, np.float32))), None,
               "silent audio"),
    "malformed_xml": (("malformed_xml.jpg", _jpeg(15)), ("malformed_xml.wav", _wav(_tone())),
                      "<annotation><object><bbox>", "malformed XML"),
    "xml_not_numbers": (("xml_not_numbers.jpg", _jpeg(16)), ("xml_not_numbers.wav",
                                                             _wav(_tone())),
                        _xml([("a", "b", "c", "d")]), "malformed XML"),
    "no_audio": (("no_audio.jpg", _jpeg(17)), None, None, "missing audio"),
}
EXTRA_IDS = ["no_image_at_all", "good1"]  # a missing id, then a duplicate of good1


@pytest.fixture(scope="module")
def flickr_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_flickr")
    for sub in ("frames", "audio", "Annotations"):
        (root / sub).mkdir()
    for sid, (image, audio, xml, _) in FLICKR_ITEMS.items():
        (root / "frames" / image[0]).write_bytes(image[1])
        if audio is not None:
            (root / "audio" / audio[0]).write_bytes(audio[1])
        if xml is not None:
            (root / "Annotations" / f"{sid}.xml").write_text(xml)
    (root / "ids.txt").write_text("\n".join(list(FLICKR_ITEMS) + EXTRA_IDS) + "\n")
    return root


def _reason_matches(reason: str, expected: str) -> bool:
    if expected.startswith("*"):  # either of "unreadable audio" / "empty audio"
        return reason.split(":")[0] in ("unreadable audio", "empty audio")
    return reason.split(":")[0] == expected


def test_every_broken_flickr_item_is_skipped_with_path_and_reason(flickr_corpus, tmp_path):
    report, summary = importers.run_import(
        "flickr", str(flickr_corpus), str(tmp_path / "out"), sample_rate=RATE,
        clip_seconds=CLIP_SECONDS, ids=str(flickr_corpus / "ids.txt"))
    good = sorted(s for s, item in FLICKR_ITEMS.items() if item[3] is None)
    bad = {s: item[3] for s, item in FLICKR_ITEMS.items() if item[3] is not None}
    tried = len(FLICKR_ITEMS) + len(EXTRA_IDS)
    print(f"flickr: tried {tried}, imported {report.imported}, skipped {len(report.skipped)} "
          f"by reason {report.reasons()}, notes {dict(report.notes)}")

    assert report.imported == summary.count == len(good) == 4
    assert len(report.skipped) == tried - len(good) == len(bad) + 2
    by_id = {Path(path).stem: (path, reason) for path, reason in report.skipped
             if reason != "duplicate id"}
    assert set(by_id) == set(bad) | {"no_image_at_all"}, by_id
    for sid, expected in bad.items():
        path, reason = by_id[sid]
        assert _reason_matches(reason, expected), (sid, reason)
        assert Path(path).is_file() or expected == "missing audio", (sid, path)
        assert str(flickr_corpus) in path
    assert by_id["no_image_at_all"][1] == "missing image"
    duplicate = [r for p, r in report.skipped if r == "duplicate id"]
    assert len(duplicate) == 1
    # The exact counts of the summary, reason by reason.
    expected_counts: dict[str, int] = {}
    for path, reason in report.skipped:
        expected_counts[reason.split(":")[0]] = expected_counts.get(reason.split(":")[0], 0) + 1
    assert report.reasons() == expected_counts
    assert sum(report.reasons().values()) == len(bad) + 2
    # One box outside the frame and one inverted: dropped and counted, their items kept.
    assert report.notes["empty box dropped"] == 2

    # The records hold exactly the good items, and the manifest the same report.
    stored = sorted(e["id"].decode() for e in records.iterate_examples(str(tmp_path / "out")))
    assert stored == good
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["extra"]["import"]["skipped"] == len(report.skipped)
    assert manifest["extra"]["import"]["skipped_by_reason"] == report.reasons()


@pytest.mark.slow
def test_the_import_tool_prints_exact_counts(flickr_corpus, tmp_path):
    from serving_fixtures import run_module

    out = tmp_path / "out"
    result = run_module("soundloc_tf.tools.import_data",
                        "--format=flickr", f"--input={flickr_corpus}",
                        f"--ids={flickr_corpus / 'ids.txt'}", f"--output={out}",
                        f"--sample_rate={RATE}", f"--clip_seconds={CLIP_SECONDS}",
                        f"--report={tmp_path / 'report.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = len(FLICKR_ITEMS) + len(EXTRA_IDS) - 4
    assert f"flickr: imported 4, skipped {skipped} " in result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["imported"], report["skipped"]) == (4, skipped)
    assert len(report["skipped_items"]) == skipped
    assert all(item["path"] and item["reason"] for item in report["skipped_items"])


# ---------------------------------------------------------------------------
# VGG-SS (JSON list) and AVSBench S4 (a boxes.json per video).


def test_vggss_bad_entries_are_skipped_and_malformed_json_is_one_error(tmp_path):
    root = tmp_path / "vggss"
    for sub in ("frames", "audio"):
        (root / sub).mkdir(parents=True)
    for sid in ("ok", "zero_image", "nan_audio"):
        (root / "frames" / f"{sid}.jpg").write_bytes(b"" if sid == "zero_image" else _jpeg())
        samples = _tone() if sid != "nan_audio" else np.full(RATE, np.nan, np.float32)
        (root / "audio" / f"{sid}.wav").write_bytes(_wav(samples, "FLOAT"))
    entries = [
        {"file": "ok", "class": "dog", "bbox": [[0.1, 0.1, 0.5, 0.5], [1.5, 1.5, 2.0, 2.0]]},
        {"file": "ok", "class": "dog", "bbox": [[0.1, 0.1, 0.5, 0.5]]},          # duplicate
        {"class": "dog", "bbox": [[0.1, 0.1, 0.5, 0.5]]},                        # no file
        {"file": "ok2", "class": "cat", "bbox": []},                             # no boxes
        {"file": "ok3", "class": "cat", "bbox": [[0.1, 0.2, 0.3]]},              # 3 numbers
        {"file": "ok4", "class": "cat", "bbox": [["a", 0.2, 0.3, 0.4]]},         # not numbers
        {"file": "zero_image", "class": "cat", "bbox": [[0.1, 0.1, 0.5, 0.5]]},
        {"file": "nan_audio", "class": "cat", "bbox": [[0.1, 0.1, 0.5, 0.5]]},
        {"file": "absent", "class": "cat", "bbox": [[0.1, 0.1, 0.5, 0.5]]},
        "not an object",
    ]
    (root / "vggss.json").write_text(json.dumps(entries))
    report, summary = importers.run_import("vggss", str(root), str(tmp_path / "out"),
                                           sample_rate=RATE, clip_seconds=CLIP_SECONDS)
    print(f"vggss: tried {len(entries)}, imported {report.imported}, "
          f"skipped by reason {report.reasons()}")
    assert report.imported == summary.count == 1
    assert report.reasons() == {"duplicate id": 1, "malformed JSON": 5, "corrupt image": 1,
                                "unreadable audio": 1, "missing clip (neither clips/<file>.<video> "
                                "nor frames/<file>.jpg)": 1}
    assert report.notes["empty box dropped"] == 1  # the box outside the image
    paths = [p for p, _ in report.skipped]
    assert paths[0].endswith("vggss.json[1]") and paths[-1].endswith("vggss.json[9]")

    (root / "vggss.json").write_text('[{"file": "ok", ')
    with pytest.raises(ValueError, match="malformed JSON"):
        importers.run_import("vggss", str(root), str(tmp_path / "out2"), sample_rate=RATE,
                             clip_seconds=CLIP_SECONDS)


def test_avsbench_bad_videos_and_seconds_are_skipped(tmp_path):
    root = tmp_path / "avs"
    good = root / "v_good"
    (good / "frames").mkdir(parents=True)
    (good / "audio.wav").write_bytes(_wav(np.tile(_tone(1.0), 3)))
    for t in range(3):
        (good / "frames" / f"{t}.jpg").write_bytes(_jpeg(t) if t != 1 else _jpeg(t)[:100])
    (good / "boxes.json").write_text(json.dumps({"class": "dog", "seconds": [
        {"second": 0, "boxes": [[0.1, 0.1, 0.5, 0.5]]},
        {"second": 1, "boxes": [[0.1, 0.1, 0.5, 0.5]]},        # truncated frame
        {"second": 2, "boxes": [[0.1, 0.1, 0.5]]},             # malformed box
        {"boxes": []},                                          # no 'second'
        {"second": 7, "boxes": []},                             # no frame 7
    ]}))
    broken_json = root / "v_json"
    broken_json.mkdir()
    (broken_json / "boxes.json").write_text("{nope")
    no_audio = root / "v_noaudio"
    (no_audio / "frames").mkdir(parents=True)
    (no_audio / "frames" / "0.jpg").write_bytes(_jpeg())
    (no_audio / "boxes.json").write_text(json.dumps({"class": "cat", "seconds": [{"second": 0}]}))
    zero_audio = root / "v_zeroaudio"
    zero_audio.mkdir()
    (zero_audio / "audio.wav").write_bytes(b"")
    (zero_audio / "boxes.json").write_text(json.dumps({"class": "cat", "seconds": []}))
    (root / "v_noannotation").mkdir()

    report, summary = importers.run_import("avsbench_s4", str(root), str(tmp_path / "out"),
                                           sample_rate=RATE, clip_seconds=CLIP_SECONDS)
    print(f"avsbench_s4: imported {report.imported}, skipped by reason {report.reasons()}")
    assert report.imported == summary.count == 1
    assert report.reasons() == {"malformed JSON": 3, "missing annotation": 1,
                                "corrupt image": 1, "missing image": 1, "missing audio": 1,
                                "unreadable audio": 1}
    assert {Path(p).parent.name if not p.endswith("]") else "" for p, _ in report.skipped} >= {
        "v_json", "v_noaudio", "v_zeroaudio", "v_noannotation"}


# ---------------------------------------------------------------------------
# Records: a flipped byte in one shard.


def _good_records(directory: Path) -> Path:
    samples = [{"image": _jpeg(i), "waveform": _tone(1.0, 300 + 50 * i), "sample_rate": RATE,
                "boxes": [[[0.1, 0.1, 0.5, 0.5]]], "id": f"s{i}"} for i in range(6)]
    records.write_records(samples, str(directory), sample_rate=RATE, clip_seconds=CLIP_SECONDS,
                          source="test", samples_per_shard=2)
    return directory


def test_a_shard_with_a_flipped_byte_is_refused_by_checksum(tmp_path):
    from soundloc_tf.config import get_config

    config = get_config("tiny")
    directory = _good_records(tmp_path / "records")
    assert len(list(records.iterate_examples(str(directory)))) == 6
    assert sum(1 for _ in records.read_records(config, str(directory), training=False)) == 6

    shard = directory / "data-00001-of-00003.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size: only the sha256 can tell
    shard.write_bytes(bytes(raw))
    for read in (lambda: records.read_records(config, str(directory), training=True),
                 lambda: records.read_records(config, str(directory), training=False),
                 lambda: list(records.iterate_examples(str(directory)))):
        with pytest.raises(ValueError, match=r"corrupted shard \(sha256 differs") as caught:
            read()
        assert str(shard) in str(caught.value)

    shard.write_bytes(bytes(raw[:-10]))  # truncated: caught by the size before hashing
    with pytest.raises(ValueError, match=r"corrupted shard \(size"):
        records.read_records(config, str(directory), training=True)

    (directory / "manifest.json").write_text("{")  # a malformed manifest
    with pytest.raises(ValueError, match="unreadable manifest.json"):
        records.read_records(config, str(directory), training=True)


def test_a_stray_half_written_shard_is_not_read(tmp_path):
    from soundloc_tf.config import get_config

    directory = _good_records(tmp_path / "records")
    (directory / "data-00003-of-00004.tfrecord").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not listed in manifest.json"):
        records.read_records(get_config("tiny"), str(directory / "*.tfrecord"), training=True)
    # The directory form reads only the manifest's shards.
    assert sum(1 for _ in records.read_records(get_config("tiny"), str(directory),
                                               training=False)) == 6
