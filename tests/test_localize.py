"""Localising in memory and from the command line: images, sounds and videos."""

import io
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from serving_fixtures import (assert_one_line_error, exported, jpeg_bytes,  # noqa: F401
                              png_bytes, run_module, scenes, soundfile_wav, to_uint8, wav_bytes,
                              write_video)
from soundloc_tf.inference import localize as loc, video as vid  # "video" is a fixture

HEATMAP_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def from_workdir(exported):
    return loc.Localizer.from_workdir(exported.workdir)


@pytest.fixture(scope="module")
def from_export(exported):
    return loc.Localizer.from_saved_model(exported.version(1))


@pytest.fixture(scope="module")
def files(exported, tmp_path_factory):
    """Two scenes as a 150x120 JPEG, a PNG and WAV files."""
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    found = scenes(exported.config, 2)
    wide = np.asarray(Image.fromarray(to_uint8(found[0]["image"])).resize((150, 120)))
    (root / "wide.jpg").write_bytes(jpeg_bytes(wide))
    (root / "scene1.png").write_bytes(png_bytes(to_uint8(found[1]["image"])))
    for i, scene in enumerate(found):
        (root / f"scene{i}.wav").write_bytes(wav_bytes(scene["waveform"], 8000))
    return root, found, wide


@pytest.mark.slow
def test_localize_equals_the_served_model(from_workdir, from_export, files, exported):
    root, _, _ = files
    served = tf.saved_model.load(str(exported.version(1))).signatures["serving_default"](
        image_bytes=tf.constant([(root / "wide.jpg").read_bytes()]),
        wav_bytes=tf.constant([(root / "scene0.wav").read_bytes()]))
    for localizer in (from_workdir, from_export):
        result = localizer.localize(root / "wide.jpg", str(root / "scene0.wav"))
        assert result.heatmap.shape == (224, 224)
        assert np.abs(result.heatmap - served["heatmap"].numpy()[0]).max() <= HEATMAP_TOLERANCE
        np.testing.assert_allclose(result.box, served["box"].numpy()[0], atol=1e-6)
        assert result.score == pytest.approx(float(served["score"].numpy()[0]), abs=1e-5)
    # The function form, with a model directory: its latest version (32 x 32 heat map).
    latest = loc.localize(root / "wide.jpg", root / "scene0.wav", str(exported.model_dir))
    assert latest.heatmap.shape == (32, 32)
    assert json.loads(json.dumps(latest.to_json())).keys() == {"box", "score"}


def test_every_image_form_gives_the_same_pixels(from_workdir, files):
    from PIL import Image

    root, found, _ = files
    pixels = to_uint8(found[1]["image"])
    reference = from_workdir.prepare_image(root / "scene1.png")
    bmp = io.BytesIO()
    Image.fromarray(pixels).save(bmp, format="BMP")
    forms = {
        "png bytes": png_bytes(pixels), "uint8 array": pixels,
        "float array": pixels.astype(np.float32) / 255.0,
        "uint16 array": pixels.astype(np.uint16) * 257, "pil image": Image.fromarray(pixels),
        "bmp via pillow": bmp.getvalue(),
    }
    for name, form in forms.items():
        got = from_workdir.prepare_image(form)
        assert got.shape == (96, 96, 3) and np.abs(got - reference).max() < 1e-6, name
    gray = from_workdir.prepare_image(pixels[..., 0])
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])


def test_every_sound_form_gives_the_same_waveform(from_workdir):
    t = np.arange(12000) / 8000.0
    samples = (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    reference = from_workdir.prepare_sound(soundfile_wav(samples, 8000, "FLOAT"))
    assert reference.shape == (8000,)
    np.testing.assert_array_equal(reference, samples[2000:10000])  # the middle second
    np.testing.assert_allclose(from_workdir.prepare_sound((samples, 8000)), reference, atol=1e-7)
    stereo = from_workdir.prepare_sound((np.stack([samples, samples], 1), 8000))
    np.testing.assert_allclose(stereo, reference, atol=1e-7)
    flac = io.BytesIO()
    import soundfile

    soundfile.write(flac, samples, 8000, format="FLAC")
    np.testing.assert_allclose(from_workdir.prepare_sound(flac.getvalue()),
                               from_workdir.prepare_sound(soundfile_wav(samples, 8000, "PCM_16")),
                               atol=1 / 32767)  # libsndfile rounds FLAC and WAV differently
    np.testing.assert_allclose(from_workdir.prepare_sound(wav_bytes(samples, 8000)), reference,
                               atol=1 / 32767)
    fast = np.sin(2 * np.pi * 330 * np.arange(72000) / 48000.0).astype(np.float32) * 0.4
    np.testing.assert_allclose(from_workdir.prepare_sound((fast, 48000)),
                               from_workdir.prepare_sound(soundfile_wav(fast, 48000, "FLOAT")),
                               atol=1e-6)


@pytest.mark.parametrize("image,fragment", [
    (b"not an image at all", "not an image file Pillow can read"),
    (b"\xff\xd8\xff" + bytes(40), "JPEG"),
    (np.zeros([5000, 3], np.uint8), "at most 4096 pixels"),
    (np.full([4, 4, 3], 1.5, np.float32), "finite values in [0, 1]"),
    (np.zeros([4, 4, 2], np.uint8), "[H, W] or [H, W, 1|3|4]"),
    (np.zeros([4, 4, 3], np.int64), "uint8, uint16 or float"),
])
def test_bad_images_raise_value_errors(from_workdir, image, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        from_workdir.prepare_image(image)


@pytest.mark.parametrize("sound,fragment", [
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "WAV file has no complete format (fmt) chunk"),
    (b"ID3 not a sound", "not a sound file"),
    ((np.zeros(100), 1000), "sample rate must be an integer in [4000, 192000]"),
    ((np.zeros(100), 8000.0), "sample rate must be an integer"),
    ((np.zeros(0), 8000), "non-empty numeric array"),
    ((np.array([0.0, np.nan]), 8000), "NaN or infinite"),
    ("a string that is no file", "No such file"),
])
def test_bad_sounds_raise_clear_errors(from_workdir, sound, fragment):
    with pytest.raises((ValueError, OSError), match=re.escape(fragment)):
        from_workdir.prepare_sound(sound)


def test_predict_validates_shapes(from_workdir):
    with pytest.raises(ValueError, match=r"need images \[N, 96, 96, 3\]"):
        from_workdir.predict(np.zeros([1, 32, 32, 3]), np.zeros([1, 8000]))
    with pytest.raises(ValueError, match="the same"):
        from_workdir.predict(np.zeros([2, 96, 96, 3]), np.zeros([1, 8000]))


def test_audio_window_slides_inside_the_track(exported):
    config = exported.config  # 1 s clips at 8 kHz
    audio = np.arange(3 * 8000, dtype=np.float32)
    np.testing.assert_array_equal(vid.audio_window(audio, 1.5, config), audio[8000:16000])
    np.testing.assert_array_equal(vid.audio_window(audio, 0.1, config), audio[:8000])
    np.testing.assert_array_equal(vid.audio_window(audio, 9.0, config), audio[-8000:])
    short = np.arange(3000, dtype=np.float32)
    np.testing.assert_array_equal(vid.audio_window(short, 0.0, config),
                                  np.concatenate([short, short, short[:2000]]))


# ---------------------------------------------------------------------------
# The command-line tool.


@pytest.mark.slow
def test_localize_tool_writes_an_overlay_at_the_image_size(exported, files, from_workdir,
                                                           tmp_path):
    from PIL import Image

    root, _, _ = files
    out = tmp_path / "out"
    result = run_module("soundloc_tf.tools.localize", f"--workdir={exported.workdir}",
                        f"--image={root / 'wide.jpg'}", f"--sound={root / 'scene0.wav'}",
                        f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    expected = from_workdir.localize(root / "wide.jpg", root / "scene0.wav")
    np.testing.assert_allclose(printed["box"], expected.box, atol=1e-6)
    assert printed["score"] == pytest.approx(expected.score, abs=1e-5)
    assert json.loads((out / "boxes.json").read_text()) == printed
    with Image.open(out / "overlay.png") as overlay:
        assert overlay.size == (150, 120)
        drawn = np.asarray(overlay)
    with Image.open(root / "wide.jpg") as original:
        np.testing.assert_array_equal(drawn, expected.overlay(np.asarray(original.convert("RGB"))))
    assert sorted(p.name for p in out.iterdir()) == ["boxes.json", "overlay.png"]


@pytest.fixture(scope="module")
def video(exported, files):
    """3 s at 4 fps, 160x120: one scene's picture; the sound of scene 0, then scene 1."""
    from PIL import Image

    root, found, _ = files
    picture = np.asarray(Image.fromarray(to_uint8(found[0]["image"])).resize((160, 120)))
    frames = [np.roll(picture, 4 * i, axis=1) for i in range(12)]
    audio = np.concatenate([np.tile(found[0]["waveform"], 2)[:12000],
                            np.tile(found[1]["waveform"], 2)[:12000]])
    path = write_video(root / "clip.mp4", frames, audio, fps=4, sample_rate=8000)
    silent = write_video(root / "silent.mp4", frames[:2], None, fps=4, sample_rate=8000)
    return path, silent


@pytest.mark.slow
def test_localize_tool_follows_the_sound_through_a_video(exported, video, from_export, tmp_path):
    import av

    path, _ = video
    out = tmp_path / "video"
    result = run_module("soundloc_tf.tools.localize", f"--saved_model={exported.version(1)}",
                        f"--video={path}", f"--output_dir={out}", "--batch_size=5")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "boxes.json").read_text())
    entries = summary["boxes"]
    assert summary["frames"] == len(entries) == 12 and summary["fps"] == 4.0
    assert [e["frame"] for e in entries] == list(range(12))
    np.testing.assert_allclose([e["time"] for e in entries], np.arange(12) / 4.0, atol=1e-3)
    # The same frames, each with the second of sound centred on it, give the same numbers
    # in memory ...
    audio, start = vid.read_video_audio(path, 8000)
    assert abs(len(audio) - 24000) < 2048 and abs(start) < 0.2
    decoded = list(vid.iter_video_frames(path))
    frames, times = [f for _, f in decoded], [t for t, _ in decoded]
    memory = vid.localize_frames(from_export, frames, times, audio, start)
    np.testing.assert_allclose([e["box"] for e in entries], memory["box"], atol=1e-6)
    np.testing.assert_allclose([e["score"] for e in entries], memory["score"], atol=1e-5)
    # ... while one fixed window (the first second, scene 0's sound) does not: the last
    # frames hear scene 1.
    fixed = vid.localize_frames(from_export, frames, [times[0]] * 12, audio, start)
    np.testing.assert_allclose(fixed["score"][:3], memory["score"][:3], atol=1e-6)
    assert np.abs(fixed["score"][-2:] - memory["score"][-2:]).min() > 1e-4
    with av.open(str(out / "overlay.mp4")) as container:
        assert container.streams.video[0].frames == 12
        assert (container.streams.video[0].width, container.streams.video[0].height) == (160, 120)
        assert container.streams.audio[0].sample_rate == 8000
    assert sorted(p.name for p in out.iterdir()) == ["boxes.json", "overlay.mp4"]

    frames_out = tmp_path / "frames"
    result = run_module("soundloc_tf.tools.localize",
                        f"--workdir={exported.workdir}", f"--video={path}",
                        f"--output_dir={frames_out}", "--video_format=png", "--max_frames=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (frames_out / "frames").iterdir()) == [
        "overlay_00000.png", "overlay_00001.png", "overlay_00002.png"]
    assert json.loads((frames_out / "boxes.json").read_text())["frames"] == 3


def test_localize_tool_errors_are_one_line(exported, files, video, tmp_path):
    root, _, _ = files
    workdir = f"--workdir={exported.workdir}"
    assert_one_line_error(run_module("soundloc_tf.tools.localize",
                                     workdir, f"--image={root / 'wide.jpg'}"),
                          "give --image together with --sound, or --video")
    assert_one_line_error(run_module("soundloc_tf.tools.localize", workdir, f"--saved_model={root}",
                                     f"--video={video[0]}"),
                          "exactly one of --workdir and --saved_model")
    assert_one_line_error(run_module("soundloc_tf.tools.localize", workdir, f"--video={video[1]}",
                                     f"--output_dir={tmp_path}"), "the video has no audio track")
    assert_one_line_error(run_module("soundloc_tf.tools.localize",
                                     workdir, f"--image={root / 'nope.jpg'}",
                                     f"--sound={root / 'scene0.wav'}"), "no such file")
    assert list(tmp_path.iterdir()) == []
