"""The exported SavedModel: TF Serving's layout, its signatures as saved_model_cli sees them,
agreement with the in-memory Keras model, the in-graph decoders, and bad input."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from serving_fixtures import (SMALL_HEATMAP, assert_one_line_error, exported,  # noqa: F401
                              jpeg_bytes, png_bytes, run_module, saved_model_cli, scenes,
                              soundfile_wav, to_uint8, wav_bytes)
from soundloc_tf.inference import export, heatmap_boxes, image_decode, wav_decode
from soundloc_tf.inference.signatures import (OUTPUT_KEYS, decode_batch, localize_fn,
                                              signature_summary)
from soundloc_tf.train.run_dir import restore_model

# Largest |difference| allowed between the SavedModel's heat map and the Keras model's.
HEATMAP_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def signatures(exported):
    loaded = tf.saved_model.load(str(exported.version(1)))
    return loaded, loaded.signatures


@pytest.fixture(scope="module")
def keras_reference(exported):
    """The in-memory model with the same decoding and post-processing, run eagerly-traced."""
    config, model, _ = restore_model(str(exported.workdir))
    run = localize_fn(model, config)

    @tf.function(autograph=False)
    def from_bytes(image_bytes, wav_bytes):
        return run(*decode_batch(image_bytes, wav_bytes, config))

    @tf.function(autograph=False)
    def from_tensors(images, waveforms):
        return run(images, waveforms)

    return config, model, from_bytes, from_tensors


@pytest.fixture(scope="module")
def media(exported):
    """Three held-out scenes as files: JPEG / PNG / 16-bit PNG and 8 kHz / 48 kHz stereo / 24-bit WAV."""
    config = exported.config
    found = scenes(config, 3)
    pixels = [to_uint8(s["image"]) for s in found]
    wave48 = np.interp(np.arange(48000) / 6.0, np.arange(8000), found[1]["waveform"])
    images = [jpeg_bytes(pixels[0]), png_bytes(pixels[1]),
              png_bytes((pixels[2].mean(axis=2) * 257).astype(np.uint16))]
    sounds = [wav_bytes(found[0]["waveform"], 8000),
              wav_bytes(np.stack([wave48, wave48], axis=1), 48000),
              soundfile_wav(found[2]["waveform"], 8000, "PCM_24")]
    return found, pixels, images, sounds


def _outputs(result) -> dict:
    return {k: v.numpy() for k, v in result.items()}


# ---------------------------------------------------------------------------
# Layout and signatures.


def test_versioned_layout_without_leftovers(exported):
    assert sorted(os.listdir(exported.model_dir)) == ["1", "2"]  # no hidden staging directory
    version = exported.version(1)
    for part in ("saved_model.pb", "variables/variables.index", export.EXPORT_INFO_PATH):
        assert (version / part).exists(), part
    info = export.read_export_info(str(version))
    assert info["signatures"] == signature_summary(exported.config)
    assert info["heatmap_size"] == exported.config.eval_size == 224
    assert info["step"] == 2 and info["limits"]["max_image_side"] == image_decode.MAX_IMAGE_SIDE
    assert export.read_export_info(str(exported.version(2)))["heatmap_size"] == SMALL_HEATMAP
    assert export.next_version(str(exported.model_dir)) == 3
    assert exported.export_seconds < 60


@pytest.mark.slow
def test_saved_model_cli_show_lists_both_signatures(exported):
    result = saved_model_cli("show", "--dir", str(exported.version(1)), "--all")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    s, t = exported.config.image_size, exported.config.num_samples
    expected = {
        "serving_default": {"inputs": {"image_bytes": ("DT_STRING", "(-1)"),
                                       "wav_bytes": ("DT_STRING", "(-1)")}},
        "serving_tensors": {"inputs": {"image": ("DT_FLOAT", f"(-1, {s}, {s}, 3)"),
                                       "waveform": ("DT_FLOAT", f"(-1, {t})")}},
    }
    outputs = {"heatmap": ("DT_FLOAT", "(-1, 224, 224)"), "box": ("DT_FLOAT", "(-1, 4)"),
               "score": ("DT_FLOAT", "(-1)")}
    found = re.findall(r"signature_def\['(\w+)'\]:\n(.*?)Method name is: (\S*)", text, re.S)
    blocks = {name: body for name, body, _ in found}
    methods = {name: method for name, _, method in found}
    for name, spec in expected.items():
        assert methods[name] == "tensorflow/serving/predict"
        for kind, tensors in (("inputs", spec["inputs"]), ("outputs", outputs)):
            for key, (dtype, shape) in tensors.items():
                pattern = (rf"{kind}\['{key}'\] tensor_info:\s+dtype: {dtype}\s+shape: "
                           rf"{re.escape(shape)}\n")
                assert re.search(pattern, blocks[name]), (name, key, blocks[name])


@pytest.mark.slow
def test_saved_model_cli_run_on_real_jpeg_png_and_wav_bytes(exported, keras_reference, media,
                                                            tmp_path):
    found, pixels, images, _ = media
    # WAV bytes go in as a Python literal (--input_exprs splits on ';', so no 0x3b bytes),
    # image bytes as a pickled object array (--inputs).
    sounds = []
    for scene in found[:2]:
        codes = np.round(np.clip(scene["waveform"][:2000], -1, 1) * 127 + 128).astype(np.uint8)
        codes[codes == ord(";")] += 1
        sounds.append(_wav_from_codes(codes, 8000))
        assert b";" not in sounds[-1]
    image_file = tmp_path / "images.npy"
    np.save(image_file, np.array(images[:2], dtype=object), allow_pickle=True)
    result = saved_model_cli(
        "run", "--dir", str(exported.version(1)), "--tag_set", "serve", "--signature_def",
        "serving_default", "--inputs", f"image_bytes={image_file}",
        "--input_exprs", f"wav_bytes={sounds!r}", "--outdir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    got = {k: np.load(tmp_path / "out" / f"{k}.npy") for k in OUTPUT_KEYS}
    want = _outputs(keras_reference[2](tf.constant(images[:2]), tf.constant(sounds)))
    assert got["heatmap"].shape == (2, 224, 224)
    assert np.abs(got["heatmap"] - want["heatmap"]).max() <= HEATMAP_TOLERANCE
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
    np.testing.assert_allclose(got["box"], want["box"], atol=1e-6)


def _wav_from_codes(codes: np.ndarray, rate: int) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(codes.tobytes())
    return out.getvalue()


# ---------------------------------------------------------------------------
# Agreement with the Keras model.


def test_loaded_serving_default_matches_the_keras_model(signatures, keras_reference, media):
    _, sigs = signatures
    _, _, images, sounds = media
    served = _outputs(sigs["serving_default"](image_bytes=tf.constant(images),
                                              wav_bytes=tf.constant(sounds)))
    local = _outputs(keras_reference[2](tf.constant(images), tf.constant(sounds)))
    assert served["heatmap"].shape == (3, 224, 224) and served["box"].shape == (3, 4)
    assert np.abs(served["heatmap"] - local["heatmap"]).max() <= HEATMAP_TOLERANCE
    np.testing.assert_allclose(served["score"], local["score"], atol=1e-5)
    np.testing.assert_allclose(served["box"], local["box"], atol=1e-6)
    assert served["heatmap"].min() == 0.0 and np.allclose(served["heatmap"].max(axis=(1, 2)), 1)


def test_loaded_serving_tensors_matches_the_keras_model(signatures, keras_reference, media,
                                                        exported):
    _, sigs = signatures
    config, model, _, from_tensors = keras_reference
    found = media[0]
    images = np.stack([s["image"] for s in found])
    waveforms = np.stack([s["waveform"] for s in found])
    served = _outputs(sigs["serving_tensors"](image=tf.constant(images),
                                              waveform=tf.constant(waveforms)))
    local = _outputs(from_tensors(tf.constant(images), tf.constant(waveforms)))
    assert np.abs(served["heatmap"] - local["heatmap"]).max() <= HEATMAP_TOLERANCE
    # The heat map is the model's attention, resized and min-max normalised.
    attention = model({"image": images, "waveform": waveforms}, training=False)["attention"]
    resized = tf.image.resize(attention[..., None], [224, 224])[..., 0].numpy()
    low = resized.min(axis=(1, 2), keepdims=True)
    expected = (resized - low) / (resized.max(axis=(1, 2), keepdims=True) - low)
    assert np.abs(served["heatmap"] - expected).max() <= HEATMAP_TOLERANCE
    np.testing.assert_allclose(served["score"], local["score"], atol=1e-5)


def test_box_bounds_the_thresholded_region_around_the_peak(signatures, media):
    _, sigs = signatures
    _, _, images, sounds = media
    served = _outputs(sigs["serving_default"](image_bytes=tf.constant(images),
                                              wav_bytes=tf.constant(sounds)))
    for heatmap, box in zip(served["heatmap"], served["box"]):
        np.testing.assert_allclose(box, _reference_box(heatmap, 0.5), atol=1e-6)


def _reference_box(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    allowed = (heatmap > threshold) | (heatmap >= heatmap.max())
    labels, _ = ndimage.label(allowed, structure=np.ones((3, 3)))
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    ys, xs = np.nonzero(labels == labels[peak])
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / heatmap.shape[0]


@pytest.mark.parametrize("size", [32, 96, 224, 1000])
def test_box_edges_survive_box_masks_exactly(size):
    from soundloc_tf.metrics import box_masks

    edges = tf.range(size + 1)
    unit = heatmap_boxes.edges_to_unit(edges, size)
    np.testing.assert_array_equal(tf.floor(unit * size).numpy(), edges.numpy())
    assert np.abs(unit.numpy() - np.arange(size + 1) / size).max() < 1e-6
    box = heatmap_boxes.edges_to_unit(tf.constant([[3, 29, size - 1, size]]), size)
    mask = box_masks(box, size).numpy()[0]
    assert mask.sum() == (size - 4) * (size - 29) and mask[29, 3] == 1 and mask[28, 3] == 0


def test_box_follows_the_peak_blob_not_the_larger_one():
    # Two blobs above 0.5: a large one (peak 0.8) and a small one holding the maximum.
    attention = np.full([1, 12, 12], 0.1, np.float32)
    attention[0, 1:7, 1:7] = 0.8
    attention[0, 9:11, 8:11] = 1.0
    heatmap, box = heatmap_boxes.heatmaps_and_boxes(tf.constant(attention), 24, 0.5)
    np.testing.assert_allclose(box.numpy()[0], _reference_box(heatmap.numpy()[0], 0.5), atol=1e-6)
    x1, y1, x2, y2 = box.numpy()[0]
    assert 8 / 12 - 0.1 < x1 < 8 / 12 + 0.05 and 9 / 12 - 0.1 < y1 < 9 / 12 + 0.05
    # A flat map has no peak: the box is the whole image.
    _, flat_box = heatmap_boxes.heatmaps_and_boxes(tf.fill([1, 12, 12], 1 / 144), 24, 0.5)
    np.testing.assert_array_equal(flat_box.numpy()[0], [0, 0, 1, 1])


# ---------------------------------------------------------------------------
# The in-graph decoders.


@pytest.mark.parametrize("subtype,fmt", [("PCM_U8", "WAV"), ("PCM_16", "WAV"), ("PCM_24", "WAV"),
                                         ("PCM_32", "WAV"), ("FLOAT", "WAV"), ("DOUBLE", "WAV"),
                                         ("PCM_16", "WAVEX"), ("FLOAT", "WAVEX")])
def test_wav_decoder_matches_soundfile(subtype, fmt):
    import io

    import soundfile

    samples = np.random.default_rng(1).uniform(-0.9, 0.9, (777, 3))
    data = soundfile_wav(samples, 22050, subtype, fmt)
    reference, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    decoded, decoded_rate = wav_decode.decode_wav(tf.constant(data), 60.0)
    assert int(decoded_rate) == rate == 22050
    assert np.abs(decoded.numpy() - reference.mean(axis=1)).max() < 1e-6


def test_decode_wav_keeps_only_the_middle_clip():
    samples = np.linspace(-0.5, 0.5, 3 * 8000)
    decoded, _ = wav_decode.decode_wav(tf.constant(soundfile_wav(samples, 8000, "FLOAT")), 1.0)
    np.testing.assert_allclose(decoded.numpy(), samples[8000:16000], atol=1e-7)


def test_resampling_keeps_the_band_and_removes_aliases():
    t = np.arange(48000) / 48000.0
    middle = slice(200, -200)
    kept = wav_decode.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 48000, 8000).numpy()
    assert kept.shape == (8000,)
    ideal = np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000.0)
    assert np.abs(kept[middle] - ideal[middle]).max() < 1e-3
    # 6 kHz is above the 4 kHz Nyquist frequency of 8 kHz: without the low-pass it
    # would fold to 2 kHz at full amplitude (RMS 0.707).
    folded = wav_decode.resample(np.sin(2 * np.pi * 6000 * t).astype(np.float32), 48000,
                                 8000).numpy()
    assert np.sqrt(np.mean(folded[middle] ** 2)) < 1e-3
    up = wav_decode.resample(np.sin(2 * np.pi * 440 * np.arange(4000) / 4000.0).astype(np.float32),
                             4000, 8000).numpy()
    assert up.shape == (8000,)
    assert np.abs(up[100:-100] - np.sin(2 * np.pi * 440 * np.arange(8000) / 8000.0)[100:-100]
                  ).max() < 0.07  # linear interpolation between 4 kHz samples


def test_short_sounds_repeat_and_long_ones_are_centred():
    np.testing.assert_array_equal(wav_decode.fit_clip(np.arange(3, dtype=np.float32), 8).numpy(),
                                  [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(wav_decode.fit_clip(np.arange(10, dtype=np.float32), 4).numpy(),
                                  [3, 4, 5, 6])


# ---------------------------------------------------------------------------
# Odd and bad input, against the loaded SavedModel.


def _tone(seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))


ACCEPTED_IMAGES = {
    "gray png": lambda px: png_bytes(px.mean(axis=2).astype(np.uint8)),
    "rgba png": lambda px: png_bytes(np.concatenate([px, np.full_like(px[..., :1], 90)], 2)),
    "palette png": lambda px: png_bytes(px, palette=True),
    "16-bit png": lambda px: png_bytes((px.mean(axis=2) * 257).astype(np.uint16)),
    "gray jpeg": lambda px: jpeg_bytes(px.mean(axis=2).astype(np.uint8)),
    "1x1 png": lambda px: png_bytes(px[:1, :1]),
    "4096x3 png": lambda px: png_bytes(np.zeros([3, 4096, 3], np.uint8)),
}

ACCEPTED_SOUNDS = {
    "silent": lambda: wav_bytes(np.zeros(8000), 8000),
    "clipped": lambda: wav_bytes(np.clip(_tone(1, 8000, 4.0), -1, 1), 8000),
    "8-bit": lambda: wav_bytes(_tone(1, 8000), 8000, sample_width=1),
    "stereo": lambda: wav_bytes(np.stack([_tone(1, 8000), -_tone(1, 8000)], 1), 8000),
    "48 kHz": lambda: wav_bytes(_tone(1, 48000), 48000),
    "4 kHz": lambda: wav_bytes(_tone(1, 4000), 4000),
    "24-bit": lambda: soundfile_wav(_tone(1, 8000), 8000, "PCM_24"),
    "float wavex": lambda: soundfile_wav(_tone(1, 8000), 8000, "FLOAT", "WAVEX"),
    "5 samples (< one FFT frame)": lambda: wav_bytes(_tone(1, 8000)[:5], 8000),
    "30 s": lambda: wav_bytes(_tone(30, 8000), 8000),
}


@pytest.mark.parametrize("kind", sorted(ACCEPTED_IMAGES))
def test_odd_images_are_converted(kind, signatures, media):
    _, sigs = signatures
    pixels = media[1][0]
    out = _outputs(sigs["serving_default"](
        image_bytes=tf.constant([ACCEPTED_IMAGES[kind](pixels)]),
        wav_bytes=tf.constant([media[3][0]])))
    _assert_valid(out)


@pytest.mark.parametrize("kind", sorted(ACCEPTED_SOUNDS))
def test_odd_sounds_are_converted(kind, signatures, media):
    _, sigs = signatures
    out = _outputs(sigs["serving_default"](image_bytes=tf.constant([media[2][0]]),
                                           wav_bytes=tf.constant([ACCEPTED_SOUNDS[kind]()])))
    _assert_valid(out)


def _assert_valid(out: dict) -> None:
    assert out["heatmap"].shape == (1, 224, 224) and np.all(np.isfinite(out["heatmap"]))
    assert 0.0 <= out["heatmap"].min() and out["heatmap"].max() <= 1.0
    x1, y1, x2, y2 = out["box"][0]
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert np.isfinite(out["score"][0]) and -1.0 <= out["score"][0] <= 1.0


def test_conversions_give_the_same_answer_as_the_plain_file(signatures, media):
    _, sigs = signatures
    pixels, sound = media[1][0], media[3][0]
    gray = pixels.mean(axis=2).astype(np.uint8)
    mono = _tone(1, 8000)

    def heatmap(image, wav):
        return sigs["serving_default"](image_bytes=tf.constant([image]),
                                       wav_bytes=tf.constant([wav]))["heatmap"].numpy()[0]

    # 16-bit gray PNG == 8-bit gray PNG of the same picture.
    assert np.abs(heatmap(png_bytes(gray.astype(np.uint16) * 257), sound)
                  - heatmap(png_bytes(gray), sound)).max() <= HEATMAP_TOLERANCE
    # A stereo file with two equal channels == the mono file.
    assert np.abs(heatmap(png_bytes(pixels), wav_bytes(np.stack([mono, mono], 1), 8000))
                  - heatmap(png_bytes(pixels), wav_bytes(mono, 8000))).max() == 0.0
    # A 1x1 image == a full-size image of that one colour.
    one = pixels[:1, :1]
    assert np.abs(heatmap(png_bytes(one), sound)
                  - heatmap(png_bytes(np.tile(one, (96, 96, 1))), sound)).max() \
        <= HEATMAP_TOLERANCE


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _gif(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="GIF")
    return out.getvalue()


REJECTED_IMAGES = {
    "empty": (lambda px: b"", "image_bytes[0]: not a JPEG or PNG image (0 bytes)"),
    "text": (lambda px: b"definitely not an image", "image_bytes[0]: not a JPEG or PNG image"),
    "gif": (_gif, "image_bytes[0]: not a JPEG or PNG image"),
    "png header only": (lambda px: png_bytes(px)[:20], "PNG header is truncated"),
    "truncated png": (lambda px: _truncated(png_bytes(px)), "PNG"),
    "truncated jpeg": (lambda px: _truncated(jpeg_bytes(px)), "JPEG"),
    "10000x10000": (lambda px: png_bytes(np.zeros([10000, 10000], np.uint8)),
                    "image_bytes[0]: image is 10000x10000 pixels (width x height); each side "
                    "must lie in [1, 4096]"),
    "5000 wide": (lambda px: png_bytes(np.zeros([2, 5000], np.uint8)), "image is 5000x2 pixels"),
}

REJECTED_SOUNDS = {
    "empty bytes": (lambda: b"", "wav_bytes[0]: not a RIFF/WAVE file (0 bytes)"),
    "no samples": (lambda: wav_bytes(np.zeros(0), 8000), "wav_bytes[0]: WAV file holds no audio"),
    "header only": (lambda: wav_bytes(_tone(1, 8000), 8000)[:30],
                    "wav_bytes[0]: WAV file has no complete format (fmt) chunk"),
    "2 kHz": (lambda: wav_bytes(_tone(1, 2000), 2000),
              "wav_bytes[0]: sample rate 2000 Hz is outside the supported range [4000, 192000]"),
    "a-law": (lambda: soundfile_wav(_tone(1, 8000), 8000, "ALAW"),
              "unsupported WAV encoding (format tag 6, 8 bits)"),
    "mp3-ish": (lambda: b"ID3\x03\x00" + bytes(100), "not a RIFF/WAVE file"),
}


@pytest.mark.parametrize("kind", sorted(REJECTED_IMAGES))
def test_bad_images_fail_with_a_clear_message(kind, signatures, media):
    _, sigs = signatures
    build, fragment = REJECTED_IMAGES[kind]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(fragment)):
        sigs["serving_default"](image_bytes=tf.constant([build(media[1][0])]),
                                wav_bytes=tf.constant([media[3][0]]))


@pytest.mark.parametrize("kind", sorted(REJECTED_SOUNDS))
def test_bad_sounds_fail_with_a_clear_message(kind, signatures, media):
    _, sigs = signatures
    build, fragment = REJECTED_SOUNDS[kind]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(fragment)):
        sigs["serving_default"](image_bytes=tf.constant([media[2][0]]),
                                wav_bytes=tf.constant([build()]))


def test_a_batch_with_one_bad_instance_is_rejected_naming_it(signatures, media):
    _, sigs = signatures
    _, _, images, sounds = media
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("image_bytes[2]: not a")):
        sigs["serving_default"](image_bytes=tf.constant(images[:2] + [b"junk"]),
                                wav_bytes=tf.constant(sounds))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("wav_bytes[1]: not a")):
        sigs["serving_default"](image_bytes=tf.constant(images),
                                wav_bytes=tf.constant([sounds[0], b"junk", sounds[2]]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image_bytes has 3 instances but wav_bytes has 2"):
        sigs["serving_default"](image_bytes=tf.constant(images), wav_bytes=tf.constant(sounds[:2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes is empty"):
        sigs["serving_default"](image_bytes=tf.constant([], tf.string),
                                wav_bytes=tf.constant([], tf.string))
    # The same signature still answers afterwards.
    _assert_valid(_outputs(sigs["serving_default"](image_bytes=tf.constant(images[:1]),
                                                   wav_bytes=tf.constant(sounds[:1]))))


def test_serving_tensors_rejects_non_finite_values(signatures, exported):
    _, sigs = signatures
    s, t = exported.config.image_size, exported.config.num_samples
    waveform = np.zeros([1, t], np.float32)
    waveform[0, 5] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="waveform holds NaN or infinite"):
        sigs["serving_tensors"](image=tf.zeros([1, s, s, 3]), waveform=tf.constant(waveform))


# ---------------------------------------------------------------------------
# Writing exports.


def test_export_refuses_bad_arguments_and_existing_versions(exported, keras_reference, tmp_path):
    config, model = keras_reference[:2]
    with pytest.raises(ValueError, match="version 1 already exists"):
        export.export_model(model, config, str(exported.export_base), version=1)
    with pytest.raises(ValueError, match="model_name must be"):
        export.export_model(model, config, str(tmp_path), model_name="../x")
    with pytest.raises(ValueError, match=r"version must be an integer in "
                                         r"\[1, 9223372036854775807\].*Received: version=0"):
        export.export_model(model, config, str(tmp_path), version=0)
    with pytest.raises(ValueError, match="heatmap_size must lie in"):
        export.export_model(model, config, str(tmp_path), heatmap_size=4)
    assert export.next_version(str(tmp_path / "nothing")) == 1


@pytest.mark.slow
def test_a_failed_export_leaves_nothing_behind(keras_reference, tmp_path, monkeypatch):
    config, model = keras_reference[:2]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.json, "dump", disk_full)  # fails after the SavedModel is written
    with pytest.raises(OSError, match="No space left"):
        export.export_model(model, config, str(tmp_path))
    assert os.listdir(tmp_path / "soundloc") == []


@pytest.mark.slow
def test_export_tool(exported, tmp_path):
    result = run_module("soundloc_tf.tools.export", f"--workdir={exported.workdir}",
                        f"--export_base={tmp_path}", "--model_name=sl", "--version=7")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "sl" / "7" / "saved_model.pb").is_file()
    assert f"to {tmp_path / 'sl' / '7'}" in result.stdout
    assert "serving_default: image_bytes string[-1], wav_bytes string[-1] -> heatmap " \
           "float32[-1, 224, 224], box float32[-1, 4], score float32[-1]" in result.stdout
    info = json.loads((tmp_path / "sl" / "7" / export.EXPORT_INFO_PATH).read_text())
    assert info["version"] == 7 and info["model_name"] == "sl"

    missing = run_module("soundloc_tf.tools.export", f"--workdir={tmp_path / 'no_run'}",
                         f"--export_base={tmp_path}")
    assert_one_line_error(missing, "no training run found")


@pytest.mark.slow
@pytest.mark.parametrize("density", [0.45, 0.6])
def test_region_growing_matches_connected_components_on_noise_and_a_spiral(density):
    # Random masks near the percolation threshold make long, winding components: the
    # case where a region grower that stops early or leaks through a gap goes wrong.
    rng = np.random.default_rng(7)
    size = 64
    masks = [rng.random((size, size)) < density for _ in range(3)]
    spiral = np.zeros((size, size), bool)  # one path 1 pixel wide, walls 1 pixel wide
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        spiral[top, left:right + 1] = True
        spiral[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            spiral[bottom, left:right + 1] = True
        if left + 2 <= right:
            spiral[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    masks.append(spiral)
    for allowed in masks:
        labels, _ = ndimage.label(allowed, structure=np.ones((3, 3)))
        seed_at = tuple(np.argwhere(allowed)[len(np.argwhere(allowed)) // 2])
        seed = np.zeros_like(allowed)
        seed[seed_at] = True
        grown = heatmap_boxes._grow(tf.constant(seed[None]), tf.constant(allowed[None]), size)
        expected = labels == labels[seed_at]
        assert expected.sum() > 1
        np.testing.assert_array_equal(grown.numpy()[0], expected)
