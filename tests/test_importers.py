"""Importers: each format's fixture lands its boxes on the right pixels; bad files are skipped."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from soundloc_tf.dataloaders import importers, records
from soundloc_tf.config import get_config

ROOT = Path(__file__).resolve().parent.parent
STAMPS = Path(__file__).resolve().parents[1].parent / "shared" / "realsets" / "stamps"
RATE = 8000
CONFIG = get_config("tiny").replace(image_size=128)  # 1 s at 8 kHz
RED = (230, 20, 20)


def _tone(freq, seconds, rate=RATE, amplitude=0.4):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frame(size, box_px, background=90):
    image = np.full([size[1], size[0], 3], background, np.uint8)
    x1, y1, x2, y2 = box_px
    image[y1:y2, x1:x2] = RED
    return image


def _red_fraction_inside(image, box):
    """Share of red pixels inside the box, and outside it."""
    red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35)
    s = image.shape[0]
    x1, y1, x2, y2 = np.round(np.asarray(box) * s).astype(int)
    inside = red[y1:y2, x1:x2]
    outside = red.sum() - inside.sum()
    return inside.mean(), outside / (s * s - inside.size)


def _read(directory):
    return {e["id"].numpy().decode(): {k: v.numpy() for k, v in e.items()}
            for e in records.read_records(CONFIG, directory, training=False)}


def _skipped(report):
    return {os.path.basename(p): r for p, r in report.skipped}


def _write_video(path, seconds, fps=10, size=(96, 64), tone_hz=440, frame_fn=None,
                 rate=16000):
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frame_fn(i / fps), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        tone = _tone(tone_hz, seconds, rate)
        for i in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp",
                                               layout="mono")
            frame.rate = rate
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------


def _flickr_xml(boxes_256):
    parts = ["<annotation><filename>x.jpg</filename>"]
    for annotator, (x1, y1, x2, y2) in enumerate(boxes_256, start=1):
        parts.append(f"<object><bbox><annotator>{annotator}</annotator><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bbox></object>")
    return "".join(parts) + "</annotation>"


@pytest.fixture(scope="module")
def flickr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr")
    for sub in ("frames", "audio", "Annotations"):
        (root / sub).mkdir()
    box = (64, 32, 160, 128)  # pixels of the 256x256 frame
    for i in range(4):
        sid = f"10{i}"
        Image.fromarray(_frame((256, 256), box)).save(root / "frames" / f"{sid}.jpg", quality=95)
        soundfile.write(root / "audio" / f"{sid}.wav", _tone(300 + 100 * i, 2.0, 22050), 22050)
        # Three annotators who agree within a few pixels.
        (root / "Annotations" / f"{sid}.xml").write_text(_flickr_xml(
            [box, (box[0] + 2, box[1], box[2], box[3] - 2), box]))
    soundfile.write(root / "audio" / "103.mp3", _tone(500, 2.0, 22050), 22050, format="MP3")
    os.remove(root / "audio" / "103.wav")
    # The bad ones: a truncated JPEG, silent audio, malformed XML, a missing id.
    jpeg = (root / "frames" / "100.jpg").read_bytes()
    (root / "frames" / "200.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    soundfile.write(root / "audio" / "200.wav", _tone(300, 2.0), RATE)
    Image.fromarray(_frame((256, 256), box)).save(root / "frames" / "201.jpg")
    soundfile.write(root / "audio" / "201.wav", np.zeros(8000, np.float32), RATE)
    Image.fromarray(_frame((256, 256), box)).save(root / "frames" / "202.jpg")
    soundfile.write(root / "audio" / "202.wav", _tone(300, 2.0), RATE)
    (root / "Annotations" / "202.xml").write_text("<annotation><object><bbox>")
    (root / "test.txt").write_text("100\n101\n102\n103\n200\n201\n202\n3908875357\n101\n")
    return root


def test_flickr_boxes_land_on_the_pixels_and_bad_files_are_named(flickr_root, tmp_path):
    report, summary = importers.run_import(
        "flickr", str(flickr_root), str(tmp_path / "out"), sample_rate=RATE, clip_seconds=1.0,
        ids=str(flickr_root / "test.txt"), progress=io.StringIO())
    assert report.imported == 4 and summary.count == 4 and summary.labeled == 4
    skipped = _skipped(report)
    assert skipped["200.jpg"].startswith("corrupt image")
    assert skipped["201.wav"].startswith("silent audio")
    assert skipped["202.xml"].startswith("malformed XML")
    assert skipped["3908875357.jpg"] == "missing image"
    assert report.reasons()["duplicate id"] == 1
    elements = _read(str(tmp_path / "out"))
    for sid in ("100", "101", "102", "103"):
        boxes = elements[sid]["boxes"]
        assert (boxes[:, 0, 2] > 0).sum() == 3  # three annotators, one box each
        np.testing.assert_allclose(boxes[0, 0], [64 / 256, 32 / 256, 160 / 256, 128 / 256])
        inside, outside = _red_fraction_inside(elements[sid]["image"], boxes[0, 0])
        assert inside > 0.97 and outside < 0.01
    audio = elements["103"]["waveform"]  # from the MP3, 22.05 kHz -> 8 kHz
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * RATE / len(audio) == pytest.approx(500, abs=2)


def test_flickr_xml_grouping_and_a_missing_annotation(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><bbox><annotator>1</annotator><xmin>0</xmin>"
                   "<ymin>0</ymin><xmax>128</xmax><ymax>64</ymax></bbox><bbox><annotator>1"
                   "</annotator><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax><ymax>20</ymax>"
                   "</bbox></object><object><bbox><annotator>2</annotator><xmin>0</xmin>"
                   "<ymin>0</ymin><xmax>256</xmax><ymax>256</ymax></bbox></object></annotation>")
    assert importers.parse_flickr_xml(str(xml)) == [
        [[0.0, 0.0, 0.5, 0.25], [10 / 256, 10 / 256, 20 / 256, 20 / 256]], [[0.0, 0.0, 1.0, 1.0]]]


# ---------------------------------------------------------------------------


def _moving_square(t, seconds=3.0, size=(96, 64)):
    """A red square at the left, the centre, then the right third of the clip."""
    third = min(int(3 * t / seconds), 2)
    x = [4, 36, 68][third]
    return _frame(size, (x, 16, x + 24, 48))


def test_vggss_takes_the_middle_frame_and_the_normalised_boxes(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "vggss"
    (root / "clips").mkdir(parents=True)
    for name in ("abcdefghijk_30", "ABCDEFGHIJK_0"):
        _write_video(root / "clips" / f"{name}.mp4", 3.0, frame_fn=_moving_square)
    (root / "clips" / "brokenvideo_5.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 500)
    centre = [36 / 96, 16 / 64, 60 / 96, 48 / 64]
    entries = [{"file": "abcdefghijk_30", "bbox": [centre], "class": "dog barking"},
               {"file": "ABCDEFGHIJK_0", "bbox": [centre, [0, 0, 0.1, 0.1]], "class": "cat"},
               {"file": "brokenvideo_5", "bbox": [centre], "class": "cat"},
               {"file": "malformed_11", "bbox": [[0.1, 0.2]]},
               {"file": "abcdefghijk_30", "bbox": [centre]},
               {"file": "notthereyet_1", "bbox": [centre]}]
    (root / "vggss.json").write_text(json.dumps(entries))
    report, summary = importers.run_import("vggss", str(root), str(tmp_path / "out"),
                                           sample_rate=RATE, clip_seconds=1.0,
                                           progress=io.StringIO())
    assert report.imported == 2
    reasons = [r for _, r in report.skipped]
    assert any(r.startswith("unreadable") for r in reasons)
    assert any("malformed JSON" in r for r in reasons)
    assert any(r.startswith("duplicate id") for r in reasons)
    assert any(r.startswith("missing clip") for r in reasons)
    assert any(p.endswith("brokenvideo_5.mp4") for p, _ in report.skipped)
    elements = _read(str(tmp_path / "out"))
    for name in ("abcdefghijk_30", "ABCDEFGHIJK_0"):
        element = elements[name]
        np.testing.assert_allclose(element["boxes"][0, 0], centre, atol=1e-6)
        # Scaled to a square: the box still covers the square, which sits in the centre third.
        image = element["image"]
        red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35)
        ys, xs = np.nonzero(red)
        assert abs(xs.mean() / 128 - (centre[0] + centre[2]) / 2) < 0.03
        inside, outside = _red_fraction_inside(image, element["boxes"][0, 0])
        assert inside > 0.9 and outside < 0.01
        spectrum = np.abs(np.fft.rfft(element["waveform"]))
        assert np.argmax(spectrum) * RATE / len(element["waveform"]) == pytest.approx(440, abs=3)
    assert (elements["ABCDEFGHIJK_0"]["boxes"][0, :, 2] > 0).sum() == 2
    assert elements["abcdefghijk_30"]["class_id"] != elements["ABCDEFGHIJK_0"]["class_id"]


# ---------------------------------------------------------------------------


def test_avsbench_s4_per_second_boxes(tmp_path):
    root = tmp_path / "s4"
    video = root / "vid1"
    (video / "frames").mkdir(parents=True)
    seconds = []
    for t in range(3):
        box_px = (10 + 30 * t, 20, 50 + 30 * t, 70)
        Image.fromarray(_frame((160, 120), box_px)).save(video / "frames" / f"{t}.jpg",
                                                         quality=95)
        seconds.append({"second": t, "boxes": [[box_px[0] / 160, box_px[1] / 120,
                                                box_px[2] / 160, box_px[3] / 120]]})
    seconds.append({"second": 4, "boxes": [[0.1, 0.1, 0.2, 0.2]]})  # no frame 4
    audio = np.concatenate([_tone(300, 1), _tone(600, 1), _tone(900, 1)])
    soundfile.write(video / "audio.wav", audio, RATE)
    (video / "boxes.json").write_text(json.dumps({"class": "guitar", "seconds": seconds}))
    (root / "vid2").mkdir()
    (root / "vid2" / "boxes.json").write_text("{not json")
    report, _ = importers.run_import("avsbench_s4", str(root), str(tmp_path / "out"),
                                     sample_rate=RATE, clip_seconds=1.0, progress=io.StringIO())
    assert report.imported == 3
    assert {os.path.basename(p.split("[")[0]): r.split(":")[0] for p, r in report.skipped} == {
        "4.jpg": "missing image", "boxes.json": "malformed JSON"}
    elements = _read(str(tmp_path / "out"))
    for t, freq in enumerate((300, 600, 900)):
        element = elements[f"vid1/{t}"]
        inside, outside = _red_fraction_inside(element["image"], element["boxes"][0, 0])
        assert inside > 0.95 and outside < 0.01
        spectrum = np.abs(np.fft.rfft(element["waveform"]))
        assert np.argmax(spectrum) * RATE / len(element["waveform"]) == pytest.approx(freq, abs=2)


# ---------------------------------------------------------------------------


def test_own_videos_give_several_unlabelled_pairs(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "videos"
    (root / "holiday").mkdir(parents=True)
    _write_video(root / "a.mp4", 3.0, frame_fn=_moving_square, tone_hz=500)
    _write_video(root / "holiday" / "b.mkv", 3.0, frame_fn=_moving_square, tone_hz=700)
    (root / "corrupt.mp4").write_bytes(os.urandom(2000))
    report, summary = importers.run_import("videos", str(root), str(tmp_path / "out"),
                                           sample_rate=RATE, clip_seconds=1.0,
                                           pairs_per_clip=3, progress=io.StringIO())
    assert report.imported == 6 and summary.labeled == 0
    assert [os.path.basename(p) for p, _ in report.skipped] == ["corrupt.mp4"]
    elements = _read(str(tmp_path / "out"))
    # Ids are <path without extension>@<seconds>, at the centres of 3 equal parts.
    assert sorted(elements)[:3] == ["a@0.50", "a@1.50", "a@2.50"]
    assert [i.split("@")[0] for i in sorted(elements)[3:]] == ["holiday/b"] * 3
    for i, t in enumerate(("0.50", "1.50", "2.50")):  # left, centre, right thirds
        image = elements[f"a@{t}"]["image"]
        red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35)
        centre_x = np.nonzero(red)[1].mean() / 128
        assert abs(centre_x - [16, 48, 80][i] / 96) < 0.04
        assert not elements[f"a@{t}"]["boxes"].any()


# ---------------------------------------------------------------------------


def _make_stamps(root):
    for sub in ("objects", "sounds", "backgrounds"):
        (root / sub).mkdir(parents=True)
    colours = {"bell": (250, 30, 30), "drum": (30, 30, 250), "gong": (30, 250, 30)}
    for i, (name, colour) in enumerate(colours.items()):
        rgba = np.zeros([40, 60, 4], np.uint8)
        rgba[5:35, 10:50, :3] = colour
        rgba[5:35, 10:50, 3] = 255
        Image.fromarray(rgba).save(root / "objects" / f"{name}__0.png")
        soundfile.write(root / "sounds" / f"{name}__0.wav", _tone(300 * (i + 1), 0.5), RATE)
    Image.fromarray(np.full([80, 100, 3], 128, np.uint8)).save(root / "backgrounds" / "bg.jpg")
    Image.fromarray(np.full([40, 60, 3], 200, np.uint8)).save(root / "objects" / "flat__0.png")
    soundfile.write(root / "sounds" / "flat__0.wav", _tone(200, 0.5), RATE)
    (root / "sounds" / "bell__1.wav").write_bytes(b"not audio at all" * 20)
    (root / "manifest.json").write_text(json.dumps(
        {"classes": ["bell", "drum", "gong", "flat"],
         "groups": {"bell": "metal", "gong": "metal", "drum": "skin"}}))
    return colours


def test_composites_have_exact_boxes_and_respect_groups(tmp_path):
    colours = _make_stamps(tmp_path / "stamps")
    report, summary = importers.run_import(
        "composites", str(tmp_path / "stamps"), str(tmp_path / "out"), sample_rate=RATE,
        clip_seconds=1.0, count=24, image_size=128, progress=io.StringIO())
    assert report.imported == 24
    assert {os.path.basename(p): r.split(":")[0] for p, r in report.skipped} == {
        "flat__0.png": "no alpha channel (an object must be an RGBA cut-out)",
        "bell__1.wav": "unreadable audio"}
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    classes = manifest["extra"]["classes"]
    assert classes == ["bell", "drum", "gong"]
    assert manifest["extra"]["import"]["skipped"] == 2
    for element in _read(str(tmp_path / "out")).values():
        colour = np.array(colours[classes[element["class_id"]]]) / 255.0
        image, box = element["image"], element["boxes"][0, 0]
        # The object's dominant channel (JPEG blurs colour edges, so no exact match).
        channel = int(np.argmax(colour))
        others = np.delete(image, channel, axis=-1).max(axis=-1)
        match = (image[..., channel] > 0.5) & (image[..., channel] - others > 0.3)
        s = image.shape[0]
        x1, y1, x2, y2 = np.round(box * s).astype(int)
        assert match[y1:y2, x1:x2].mean() > 0.9  # the sounding object fills its box
        ys, xs = np.nonzero(match)
        np.testing.assert_allclose([xs.min() / s, ys.min() / s, (xs.max() + 1) / s,
                                    (ys.max() + 1) / s], box, atol=1.5 / s)
        spectrum = np.abs(np.fft.rfft(element["waveform"]))
        peak = np.argmax(spectrum) * RATE / len(element["waveform"])
        assert peak == pytest.approx(300 * (classes.index(classes[element["class_id"]]) + 1),
                                     abs=3)


def test_gaussian_blur_keeps_flat_images_and_spreads_an_impulse_by_sigma():
    flat = np.full([9, 11, 3], 70.0, np.float32)
    np.testing.assert_allclose(importers.gaussian_blur(flat, 1.5), flat, rtol=1e-6)
    impulse = np.zeros([41, 41], np.float32)
    impulse[20, 20] = 1.0
    blurred = importers.gaussian_blur(impulse, 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    ys, xs = np.mgrid[:41, :41]
    assert np.sqrt((blurred * (xs - 20) ** 2).sum()) == pytest.approx(2.0, abs=0.02)
    assert importers.gaussian_blur(impulse, 0.0) is impulse


def _textured_square(size=60):
    """A noisy red square cut-out with a hard edge, on a flat green background."""
    rng = np.random.default_rng(3)
    patch = np.zeros([size, size, 4], np.float32)
    patch[10:50, 10:50, :3] = RED + rng.normal(0, 25, [40, 40, 3])
    patch[10:50, 10:50, 3] = 255.0
    region = np.full([size, size, 3], (40.0, 160.0, 60.0), np.float32)
    return np.clip(patch, 0, 255), region


def test_blended_paste_softens_the_seam_matches_colour_and_never_sharpens():
    patch, region = _textured_square()
    alpha = patch[..., 3:] / 255.0
    plain = alpha * patch[..., :3] + (1 - alpha) * region
    blended = importers.blend_cutout(patch, region, np.random.default_rng(0))
    inside = alpha[..., 0] > 0.5

    def seam(image):  # the mean colour step across the square's left edge
        return float(np.abs(image[10:50, 10] - image[10:50, 9]).mean())

    assert seam(blended) < 0.75 * seam(plain)
    # The mean colour moved toward the background's, by at most BLEND_COLOUR[1] of the way.
    moved = (plain[inside].mean(0) - blended[inside].mean(0)) / (
        plain[inside].mean(0) - region.mean((0, 1)))
    assert 0.0 <= moved.mean() <= importers.BLEND_COLOUR[1] + 0.05
    # The background here is flat, so the object is blurred by the largest sigma, not more.
    interior = np.zeros_like(inside)
    interior[14:46, 14:46] = True
    assert importers._sharpness(blended, interior) < importers._sharpness(plain, interior)
    # Away from the object the background is untouched.
    np.testing.assert_allclose(blended[:5], region[:5], atol=1e-4)
    # A background sharper than the object leaves the object's detail as it is.
    busy = np.random.default_rng(1).uniform(0, 255, region.shape).astype(np.float32)
    kept = importers.blend_cutout(patch, busy, np.random.default_rng(0))
    shift = kept[20:40, 20:40] - plain[20:40, 20:40]
    assert np.abs(shift - shift.mean((0, 1))).max() < 1e-3  # only the colour shift


def test_blended_scenes_keep_the_plain_scenes_layout_boxes_and_sound(tmp_path):
    _make_stamps(tmp_path / "stamps")
    stamps = importers.load_stamps(str(tmp_path / "stamps"), RATE,
                                   importers.ImportReport("composites"))
    for index in range(6):
        plain = importers.compose_scene(stamps, np.random.default_rng([7, index]), 128, RATE)
        blended = importers.compose_scene(stamps, np.random.default_rng([7, index]), 128, RATE,
                                          blend_edges=True)
        assert blended["box"] == plain["box"] and blended["classes"] == plain["classes"]
        np.testing.assert_array_equal(blended["mask"], plain["mask"])
        np.testing.assert_array_equal(blended["waveform"], plain["waveform"])
        # The fixture's background is flat grey: whatever differs from it is an object, and
        # blending changes only the objects and a feathered rim around them.
        footprint = np.abs(plain["image"].astype(int) - 128).max(-1) > 3
        blended_footprint = np.abs(blended["image"].astype(int) - 128).max(-1) > 3
        assert footprint.any() and not (blended_footprint & ~_dilate(footprint, 3)).any()
        assert (blended["image"] != plain["image"]).any()
    # run_import passes the option through: the same boxes, other pixels.
    written = {}
    for blend in (False, True):
        importers.run_import("composites", str(tmp_path / "stamps"), str(tmp_path / f"{blend}"),
                             sample_rate=RATE, clip_seconds=1.0, count=3, image_size=128,
                             blend_edges=blend, progress=io.StringIO())
        written[blend] = _read(str(tmp_path / f"{blend}"))
    for key, element in written[True].items():
        np.testing.assert_array_equal(element["boxes"], written[False][key]["boxes"])
        assert np.abs(element["image"] - written[False][key]["image"]).max() > 0.05


def test_composites_of_one_category_draw_distractors_of_the_sources_category():
    size = 96
    names = ["bell", "gong", "cow", "goat"]
    stamps = importers.StampSet(
        root="", classes=names, groups={n: n for n in names},
        objects={n: [np.dstack([np.full([30, 30, 3], 40 * (i + 1), np.uint8),
                                np.full([30, 30], 255, np.uint8)])] for i, n in enumerate(names)},
        sounds={n: [_tone(300 * (i + 1), 0.5)] for i, n in enumerate(names)},
        backgrounds=[np.full([size, size, 3], 128, np.uint8)])
    categories = {"bell": "music", "gong": "music", "cow": "animals", "goat": "animals"}
    mixed = 0
    for index in range(24):
        plain = importers.compose_scene(stamps, np.random.default_rng([3, index]), size, RATE)
        mixed += len({categories[c] for c in plain["classes"]}) > 1
        scene = importers.compose_scene(stamps, np.random.default_rng([3, index]), size, RATE,
                                        min_objects=2, categories=categories)
        # Two groups per category here: the source and one distractor of its category.
        assert len(scene["classes"]) == 2 and scene["class"] == scene["classes"][0]
        assert len({categories[c] for c in scene["classes"]}) == 1
    assert mixed >= 6


def _dilate(mask, pixels):
    out = mask.copy()
    for _ in range(pixels):
        out[1:] |= out[:-1]
        out[:-1] |= out[1:]
        out[:, 1:] |= out[:, :-1]
        out[:, :-1] |= out[:, 1:]
    return out


@pytest.mark.skipif(not STAMPS.is_dir(), reason=f"real stamps folder absent: {STAMPS}")
def test_composites_from_the_real_stamps():
    report = importers.ImportReport("composites")
    stamps = importers.load_stamps(str(STAMPS), 16000, report, io.StringIO())
    assert len(stamps.classes) == 28 and not report.skipped
    for index in range(30):
        scene = importers.compose_scene(stamps, np.random.default_rng([7, index]), 256, 16000)
        groups = [stamps.groups[c] for c in scene["classes"]]
        assert len(set(groups)) == len(groups)  # no two classes of one group in a scene
        ys, xs = np.nonzero(scene["mask"])
        assert scene["box"] == [xs.min() / 256, ys.min() / 256, (xs.max() + 1) / 256,
                                (ys.max() + 1) / 256]
        assert scene["mask"].sum() > 0.2 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        assert 0.5 < np.max(np.abs(scene["waveform"])) <= 0.9 + 1e-6


@pytest.mark.slow
def test_import_tool_prints_the_summary(flickr_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "soundloc_tf.tools.import_data", "--format=flickr",
         f"--input={flickr_root}", f"--ids={flickr_root / 'test.txt'}",
         f"--output={tmp_path / 'out'}", "--sample_rate=8000", "--clip_seconds=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported 4, skipped 5" in result.stdout
    assert "200.jpg: corrupt image" in result.stdout
    assert "flickr [" in result.stderr  # the progress bar
    again = subprocess.run(
        [sys.executable, "-m", "soundloc_tf.tools.import_data", "--format=flickr",
         f"--input={flickr_root}", f"--output={tmp_path / 'out'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds records" in again.stderr
    assert "Traceback" not in again.stderr
