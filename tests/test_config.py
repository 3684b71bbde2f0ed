"""Presets, overrides and validation messages."""

import pytest

from soundloc_tf.config import Config, get_config


def test_paper_defaults():
    c = Config()
    assert (c.image_size, c.map_size, c.visual_dim) == (320, 20, 512)
    assert (c.learning_rate, c.batch_size, c.attention_temperature) == (1e-4, 30, 1.0)
    assert c.unsupervised_loss == "triplet" and c.attention_relu


def test_tiny_preset_map():
    c = get_config("tiny")
    assert (c.image_size, c.map_size, c.num_samples) == (96, 12, 8000)


@pytest.mark.parametrize("overrides,message", [
    ({"batch_size": 1}, "batch_size=1"),
    ({"label_fraction": 1.5}, "label_fraction=1.5"),
    ({"image_tower": "resnet"}, "image_tower='resnet'"),
    ({"image_size": 100}, "image_size=100"),
    ({"attention_temperature": 0.0}, "attention_temperature=0.0"),
    ({"unsupervised_loss": "none", "label_fraction": 0.0}, "unsupervised_loss='none'"),
    ({"eval_seed": 0}, "eval_seed"),
    ({"object_identity": 1.5}, "object_identity=1.5"),
    ({"cue_size": 0.6}, "cue_size=0.6"),
    ({"image_tower_precision": "float16"}, "image_tower_precision='float16'"),
    ({"hard_way_negative_threshold": 0.7}, "hard_way_negative_threshold=0.7"),
    ({"hard_way_mask_temperature": 0.0}, "hard_way_mask_temperature=0.0"),
])
def test_impossible_values_name_what_was_received(overrides, message):
    with pytest.raises(ValueError, match="Received: .*" + message):
        get_config("tiny", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="Received: preset='huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="learning_rat"):
        get_config("tiny", learning_rat=1.0)
