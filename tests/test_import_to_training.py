"""Every importer's output trains and evaluates through the command-line tools, unedited.

For each format a tiny fixture (with one corrupt input) is imported by
`importers.run_import` at the tiny preset's audio settings (8 kHz, 1 s), then
`tools.train` and `tools.evaluate` run on the records as subprocesses, exactly as
a user would run them.  The evaluation's whole-image baseline is checked against
the boxes written into the fixture, so the boxes are shown to survive the whole
trip (fixture -> records -> reader -> evaluation), not only to exist.

The unlabelled `videos` records train, and the model is scored on a labelled
record set; scoring the box-less records themselves is refused with one line.
"""

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
TINY = get_config("tiny")
RATE, CLIP = TINY.sample_rate, TINY.clip_seconds  # 8 kHz, 1 s: no resampling at read time
EVAL_SIZE = TINY.eval_size
RED = (230, 20, 20)


# --- fixture builders ---------------------------------------------------------------


def _tone(freq, seconds, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frame(width, height, box):
    """A grey frame with a red rectangle on the normalised box."""
    image = np.full([height, width, 3], 90, np.uint8)
    x1, y1, x2, y2 = box
    image[int(y1 * height):int(y2 * height), int(x1 * width):int(x2 * width)] = RED
    return image


def _save_jpeg(array, path):
    Image.fromarray(array).save(path, quality=90)


def _truncate(path):
    """Cut a JPEG in half: decoding it fails ("corrupt image")."""
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) // 2])


def _write_video(path, seconds, box, tone_hz, fps=8, size=(64, 48)):
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_frame(*size, box), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        tone = _tone(tone_hz, seconds, 16000)
        for i in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp",
                                               layout="mono")
            frame.rate = 16000
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


BOXES = [(0.25, 0.25, 0.75, 0.625), (0.125, 0.5, 0.5, 0.875), (0.5, 0.125, 0.875, 0.5),
         (0.375, 0.375, 0.625, 0.75), (0.0625, 0.0625, 0.4375, 0.4375)]


def _flickr(root):
    """5 annotated ids, a truncated JPEG, and an id without XML (skipped: required)."""
    for sub in ("frames", "audio", "Annotations"):
        (root / sub).mkdir(parents=True)
    ids = []
    for i, box in enumerate([*BOXES, BOXES[0], BOXES[1]]):
        sid = f"10{i}"
        ids.append(sid)
        _save_jpeg(_frame(96, 96, box), root / "frames" / f"{sid}.jpg")
        soundfile.write(root / "audio" / f"{sid}.wav", _tone(300 + 100 * i, CLIP), RATE)
        if sid != "106":  # 106: no annotation
            coords = "".join(f"<{k}>{v * 256:g}</{k}>" for k, v in zip(
                ("xmin", "ymin", "xmax", "ymax"), box))
            bboxes = "".join(f"<object><bbox><annotator>{a}</annotator>{coords}</bbox></object>"
                             for a in (1, 2))  # two annotators who agree exactly
            (root / "Annotations" / f"{sid}.xml").write_text(
                f"<annotation>{bboxes}</annotation>")
    _truncate(root / "frames" / "105.jpg")
    (root / "ids.txt").write_text("\n".join(ids) + "\n")
    return ({"ids": str(root / "ids.txt"), "require_annotation": True}, BOXES,
            {"105.jpg": "corrupt image", "106.xml": "missing annotation"})


def _vggss(root):
    """4 frame+audio entries, one video clip, one truncated JPEG; two classes."""
    for sub in ("frames", "audio", "clips"):
        (root / sub).mkdir(parents=True)
    entries = []
    for i, box in enumerate(BOXES):
        name = f"vid{i:08d}_{10 * i}"
        if i == 4:
            _write_video(root / "clips" / f"{name}.mp4", 1.0, box, 440)
        else:
            _save_jpeg(_frame(128, 96, box), root / "frames" / f"{name}.jpg")
            soundfile.write(root / "audio" / f"{name}.wav", _tone(300 + 150 * i, 2 * CLIP),
                            RATE)
        entries.append({"file": name, "bbox": [list(box)], "class": ["dog", "cat"][i % 2]})
    bad = "badjpeg0000_5"
    _save_jpeg(_frame(128, 96, BOXES[0]), root / "frames" / f"{bad}.jpg")
    _truncate(root / "frames" / f"{bad}.jpg")
    soundfile.write(root / "audio" / f"{bad}.wav", _tone(500, CLIP), RATE)
    entries.append({"file": bad, "bbox": [list(BOXES[0])], "class": "dog"})
    (root / "vggss.json").write_text(json.dumps(entries))
    return {}, BOXES, {f"{bad}.jpg": "corrupt image"}


def _avsbench_s4(root):
    """Two 3-second videos, one frame truncated: 5 labelled seconds."""
    boxes, per_video = [], [BOXES[:3], BOXES[2:5]]
    for v, video_boxes in enumerate(per_video):
        video = root / f"video{v}"
        (video / "frames").mkdir(parents=True)
        seconds = []
        for t, box in enumerate(video_boxes):
            _save_jpeg(_frame(96, 72, box), video / "frames" / f"{t}.jpg")
            seconds.append({"second": t, "boxes": [list(box)]})
        soundfile.write(video / "audio.wav", np.concatenate(
            [_tone(300 * (t + 1), 1.0) for t in range(3)]), RATE)
        (video / "boxes.json").write_text(json.dumps({"class": f"c{v}", "seconds": seconds}))
        boxes += video_boxes
    _truncate(root / "video1" / "frames" / "2.jpg")
    del boxes[-1]
    return {}, boxes, {"2.jpg": "corrupt image"}


def _videos(root):
    """Two 2-second clips, 2 pairs each (unlabelled), and a corrupt file."""
    (root / "trip").mkdir(parents=True)
    _write_video(root / "a.mp4", 2.0, BOXES[0], 500)
    _write_video(root / "trip" / "b.mkv", 2.0, BOXES[1], 700)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"pairs_per_clip": 2}, [], {"corrupt.mp4": "unreadable video"}


def _composites(root):
    """Three RGBA classes in two groups, one truncated cut-out: 6 scenes of 96 px."""
    for sub in ("objects", "sounds", "backgrounds"):
        (root / sub).mkdir(parents=True)
    for i, (name, colour) in enumerate({"bell": (250, 30, 30), "drum": (30, 30, 250),
                                        "gong": (30, 250, 30)}.items()):
        rgba = np.zeros([30, 40, 4], np.uint8)
        rgba[4:26, 5:35, :3], rgba[4:26, 5:35, 3] = colour, 255
        Image.fromarray(rgba).save(root / "objects" / f"{name}__0.png")
        soundfile.write(root / "sounds" / f"{name}__0.wav", _tone(300 * (i + 1), 0.5), RATE)
    Image.fromarray(np.zeros([30, 40, 4], np.uint8) + 200).save(root / "objects" / "drum__1.png")
    _truncate(root / "objects" / "drum__1.png")
    Image.fromarray(np.full([80, 100, 3], 128, np.uint8)).save(root / "backgrounds" / "bg.jpg")
    (root / "manifest.json").write_text(json.dumps(
        {"classes": ["bell", "drum", "gong"], "groups": {"bell": "metal", "gong": "metal"}}))
    return ({"count": 6, "image_size": 96, "seed": 3}, None,  # boxes: read from the records
            {"drum__1.png": "corrupt image"})


def _photo_folder(root):
    """Four whole photos of four groups with a box each, their tones, one truncated photo."""
    (root / "photos").mkdir(parents=True)
    (root / "sounds").mkdir()
    photos = []
    for i, (name, colour) in enumerate({"bell": (250, 30, 30), "drum": (30, 30, 250),
                                        "gong": (30, 250, 30), "horn": (250, 250, 30)}.items()):
        image = np.full([60, 80, 3], 100, np.uint8)
        image[15:45, 20:60] = colour
        Image.fromarray(image).save(root / "photos" / f"{name}__0.jpg")
        photos.append({"file": f"photos/{name}__0.jpg", "class": name,
                       "boxes": [[0.25, 0.25, 0.75, 0.75]]})
        soundfile.write(root / "sounds" / f"{name}__0.wav", _tone(300 * (i + 1), 0.5), RATE)
    Image.fromarray(np.full([60, 80, 3], 90, np.uint8)).save(root / "photos" / "bell__1.jpg")
    _truncate(root / "photos" / "bell__1.jpg")
    photos.append({"file": "photos/bell__1.jpg", "class": "bell", "boxes": [[0, 0, 1, 1]]})
    (root / "manifest.json").write_text(json.dumps({"photos": photos}))
    return {"bell__1.jpg": "corrupt image"}


def _mosaics(root):
    """2x2 mosaics of the photo folder: the truth is the sounding tile."""
    return {"count": 6, "image_size": 96, "seed": 3}, None, _photo_folder(root)


def _photos(root):
    """Single photos of the photo folder with their boxes."""
    return {"count": 4, "image_size": 96, "seed": 3}, None, _photo_folder(root)


BUILDERS = {"flickr": _flickr, "vggss": _vggss, "avsbench_s4": _avsbench_s4,
            "videos": _videos, "composites": _composites, "mosaics": _mosaics,
            "photos": _photos}
IMPORTED = {"flickr": 5, "vggss": 5, "avsbench_s4": 5, "videos": 4, "composites": 6,
            "mosaics": 6, "photos": 4}
LABELED = {"flickr": 5, "vggss": 5, "avsbench_s4": 5, "videos": 0, "composites": 6,
           "mosaics": 6, "photos": 4}


# --- helpers --------------------------------------------------------------------------


def _run(tool, *args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", f"soundloc_tf.tools.{tool}",
                           *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _whole_image_ciou(boxes):
    """cIoU of the all-ones prediction = the box's share of the eval frame (one box, gt 0/1)."""
    edges = np.floor(np.asarray(boxes, np.float64) * EVAL_SIZE)
    areas = (edges[:, 2] - edges[:, 0]) * (edges[:, 3] - edges[:, 1])
    return float(np.mean(areas / EVAL_SIZE ** 2))


class _Imports:
    """Imports (once per format) and trained work directories, shared by the tests."""

    def __init__(self, base):
        self.base, self.done, self.trained = base, {}, {}

    def get(self, fmt):
        if fmt not in self.done:
            root = self.base / f"{fmt}_input"
            options, boxes, bad = BUILDERS[fmt](root)
            out = self.base / f"{fmt}_records"
            report, summary = importers.run_import(
                fmt, str(root), str(out), sample_rate=RATE, clip_seconds=CLIP,
                progress=io.StringIO(), **options)
            if boxes is None:  # composites, mosaics, photos: the boxes the importer computed
                boxes = [e["boxes"][0, 0].numpy() for e in records.read_records(
                    TINY, str(out), training=False)]
            self.done[fmt] = dict(records=out, report=report, summary=summary, boxes=boxes,
                                  bad=bad)
        return self.done[fmt]

    def train(self, fmt, validation_fmt):
        if fmt not in self.trained:
            workdir = self.base / f"{fmt}_run"
            result = _run("train", "--preset=tiny", f"--workdir={workdir}",
                          f"--records={self.get(fmt)['records']}",
                          f"--validation_records={self.get(validation_fmt)['records']}",
                          "--train_steps=2", "--batch_size=4", "--eval_every=100",
                          "--checkpoint_every=1", "--num_summary_images=0")
            self.trained[fmt] = (workdir, result)
        return self.trained[fmt]


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    return _Imports(tmp_path_factory.mktemp("import_to_training"))


# --- tests ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", importers.FORMATS)
def test_import_then_train_then_evaluate_without_hand_edits(imports, fmt):
    if fmt in ("vggss", "videos"):
        pytest.importorskip("av")  # their fixtures hold video clips
    imported = imports.get(fmt)
    # 1. The import: counts, and the corrupt input named with its reason in the manifest.
    assert imported["report"].imported == IMPORTED[fmt]
    assert imported["summary"].count == IMPORTED[fmt]
    assert imported["summary"].labeled == LABELED[fmt]
    manifest = json.loads((imported["records"] / "manifest.json").read_text())
    assert manifest["count"] == IMPORTED[fmt] and manifest["labeled"] == LABELED[fmt]
    assert manifest["features"]["sample_rate"] == RATE
    skipped = {os.path.basename(item["path"]): item["reason"]
               for item in manifest["extra"]["import"]["skipped_items"]}
    assert set(skipped) == set(imported["bad"]), skipped
    for name, reason in imported["bad"].items():
        assert skipped[name].startswith(reason), skipped
    assert manifest["extra"]["import"]["skipped"] == len(imported["bad"])

    # 2. Training on the records (validated on a labelled set: the same one, or Flickr's
    #    for the unlabelled videos).
    scored_on = "flickr" if fmt == "videos" else fmt
    workdir, train = imports.train(fmt, scored_on)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    assert "step 2/2" in train.stdout, train.stdout
    assert "validation at step 2" in train.stdout
    assert (workdir / "checkpoints" / "checkpoint").exists()

    # 3. Evaluation on every labelled record.
    target = imports.get(scored_on)
    result = _run("evaluate", f"--workdir={workdir}", f"--records={target['records']}",
                  "--num_overlays=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["n"] == LABELED[scored_on] and metrics["step"] == 2
    assert f"{LABELED[scored_on]} pairs, step 2" in result.stdout
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["mean_ciou"] <= 1.0
    assert 0.0 <= metrics["pointing_game"] <= 1.0
    assert set(metrics["baselines"]) == {"whole_image", "center_box"}
    assert metrics["random_baseline"]["n"] == LABELED[scored_on]
    for baseline in metrics["baselines"].values():
        assert baseline["n"] == LABELED[scored_on] and 0.0 <= baseline["auc"] <= 1.0
    # The boxes of the fixture reached the evaluation unchanged: the whole-image
    # prediction's cIoU is each box's share of the frame.
    assert metrics["baselines"]["whole_image"]["mean_ciou"] == pytest.approx(
        _whole_image_ciou(target["boxes"]), abs=1e-6)


@pytest.mark.slow
def test_evaluating_unlabelled_video_records_fails_with_one_line_error(imports):
    pytest.importorskip("av")
    workdir, train = imports.train("videos", "flickr")
    assert train.returncode == 0, train.stderr[-3000:]
    result = _run("evaluate", f"--workdir={workdir}",
                  f"--records={imports.get('videos')['records']}", "--num_overlays=0",
                  f"--output_dir={workdir / 'eval_unlabelled'}")
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:])
    # TensorFlow's own start-up log lines may precede it; ours is one line, the last.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert "none of the pairs has an annotated box" in errors[0]
    assert "Received: 4 pairs without boxes" in errors[0]
