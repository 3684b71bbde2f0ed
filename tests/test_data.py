"""The built-in synthetic scenes: spec, determinism, ground truth, audio and the confound."""

import numpy as np
import pytest

from soundloc_tf.dataloaders import data
from soundloc_tf.config import get_config

CONFIG = get_config("tiny")


def _take(config, seed, count, **kwargs):
    return next(iter(data.synthetic_dataset(config, seed, count=count, **kwargs).batch(count)))


def test_element_spec_is_the_shared_spec():
    ds = data.synthetic_dataset(CONFIG, 0, count=2)
    assert ds.element_spec == data.element_spec(CONFIG)


def test_scenes_are_a_pure_function_of_seed_and_index():
    a = _take(CONFIG, 0, 6)
    b = next(iter(data.synthetic_dataset(CONFIG, 0, start=3, count=3).batch(3)))
    np.testing.assert_array_equal(a["image"][3:], b["image"])
    np.testing.assert_array_equal(a["waveform"][3:], b["waveform"])
    other = _take(CONFIG, 1, 6)
    assert not np.allclose(a["image"], other["image"])


def test_ground_truth_box_is_the_sounding_object_and_inside_the_image():
    scenes = _take(CONFIG, 0, 64, with_extras=True)
    box = scenes["boxes"][:, 0, 0].numpy()
    np.testing.assert_array_equal(box, scenes["object_boxes"][:, 0].numpy())
    assert (box >= 0).all() and (box <= 1).all() and (box[:, 2:] > box[:, :2]).all()
    sides = box[:, 2:] - box[:, :2]
    assert sides.min() > 0.8 * CONFIG.min_object_size and sides.max() < 1.3 * CONFIG.max_object_size
    classes = scenes["object_classes"].numpy()
    assert (classes[:, 0] == scenes["class_id"].numpy()).all()
    counts = (classes >= 0).sum(axis=1)
    assert counts.min() == CONFIG.min_objects and counts.max() == CONFIG.max_objects
    for row in classes:  # distinct classes per scene
        present = row[row >= 0]
        assert len(set(present)) == len(present)


def test_sounding_object_is_visible_in_its_box():
    scenes = _take(CONFIG, 0, 16)
    image = scenes["image"].numpy()
    size = CONFIG.image_size
    for i in range(16):
        x1, y1, x2, y2 = (scenes["boxes"][i, 0, 0].numpy() * size).astype(int)
        centre = image[i, (y1 + y2) // 2 - 1:(y1 + y2) // 2 + 1, x1:x2]
        # Object colours are saturated (HSV s=0.85); the background is greyish.
        saturation = centre.max(-1) - centre.min(-1)
        assert saturation.max() > 0.4


def test_audio_is_class_specific_and_at_the_stated_level():
    scenes = _take(CONFIG, 0, 64)
    wave = scenes["waveform"].numpy()
    np.testing.assert_allclose(wave.std(axis=1), data.CLIP_RMS, rtol=1e-3)
    spectra = np.abs(np.fft.rfft(wave, axis=1))
    classes = scenes["class_id"].numpy()
    peaks = spectra[:, 20:].argmax(axis=1) + 20  # strongest component above 20 Hz
    same = [abs(peaks[i] - peaks[j]) for i in range(64) for j in range(64)
            if i < j and classes[i] == classes[j]]
    assert np.median(same) < 15  # same class, nearly the same dominant frequency (Hz)


def test_label_fraction_marks_that_share_of_scenes():
    config = CONFIG.replace(label_fraction=0.25)
    labeled = _take(config, 0, 400)["labeled"].numpy()
    assert 0.18 < labeled.mean() < 0.32


def test_confound_cue_announces_the_sounding_class():
    config = CONFIG.replace(confound=0.9)
    scenes = _take(config, 0, 200, with_extras=True)
    agree = (scenes["cue_class"].numpy() == scenes["class_id"].numpy()).mean()
    assert agree > 0.85
    assert (scenes["cue_box"].numpy()[:, 2] - scenes["cue_box"].numpy()[:, 0]
            == pytest.approx(config.cue_size, abs=1e-5))
    plain = _take(CONFIG, 0, 4, with_extras=True)
    assert (plain["cue_class"].numpy() == -1).all()


def test_object_identity_sets_how_often_an_object_wears_its_own_look():
    config = CONFIG.replace(object_identity=0.3, confound=1.0)
    scenes = _take(config, 0, 300, with_extras=True)
    active = scenes["object_classes"].numpy() >= 0
    own = scenes["object_looks"].numpy() == scenes["object_classes"].numpy()
    # A random other look is the object's own one time in num_classes.
    expected = 0.3 + 0.7 / config.num_classes
    assert abs(own[active].mean() - expected) < 0.06
    assert (scenes["cue_class"].numpy() == scenes["class_id"].numpy()).all()
    # Only the looks change: boxes and sounds are those of the default stream.
    plain = _take(config.replace(object_identity=1.0), 0, 300, with_extras=True)
    np.testing.assert_array_equal(scenes["waveform"], plain["waveform"])
    np.testing.assert_array_equal(scenes["object_boxes"], plain["object_boxes"])
    assert (plain["object_looks"].numpy() == plain["object_classes"].numpy()).all()
    differs = (scenes["object_looks"].numpy() != plain["object_looks"].numpy()).any(axis=1)
    assert not np.allclose(scenes["image"].numpy()[differs], plain["image"].numpy()[differs])


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError, match="Received: start=-1"):
        data.synthetic_dataset(CONFIG, 0, start=-1)
    with pytest.raises(ValueError, match="Received: count=0"):
        data.synthetic_dataset(CONFIG, 0, count=0)
