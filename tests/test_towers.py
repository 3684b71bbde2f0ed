"""The tower table (soundloc_tf/towers.py) states what the built models do."""

import ast
from pathlib import Path

import pytest

from soundloc_tf import towers
from soundloc_tf.config import get_config
from soundloc_tf.modeling import soundnet, yamnet
from soundloc_tf.modeling.models import build_image_tower

# The smallest image each tower maps to a 2x2 map: small enough to build VGG16 quickly.
MAP_SIDE = 2


@pytest.mark.parametrize("name, widths", [("vgg16", (8, 16)), ("tiny_vgg", (8, 16)),
                                          ("tiny_vgg", (4, 8, 12, 16))])
def test_every_image_towers_map_has_the_tables_size_and_channels(name, widths):
    facts = towers.IMAGE[name]
    size = MAP_SIDE * facts.downsampling(widths)
    config = get_config("tiny", image_tower=name, image_size=size, tiny_image_widths=widths,
                        image_weights="none")
    assert (config.image_downsampling, config.visual_dim) == (
        facts.downsampling(widths), facts.channels(widths))
    tower = build_image_tower(config)
    assert tower.output_shape == (None, MAP_SIDE, MAP_SIDE, config.visual_dim)
    assert config.map_size == MAP_SIDE


def test_vgg16_downsamples_by_16_into_512_channels():
    """The paper's 20x20x512 map at 320x320: four pools before block5_conv3."""
    assert towers.IMAGE["vgg16"].downsampling(()) == 16
    assert towers.IMAGE["vgg16"].channels(()) == 512


def test_soundnet8_facts_are_the_models():
    facts = towers.AUDIO["soundnet8"]
    assert facts.sample_rate == soundnet.SAMPLE_RATE
    assert facts.min_samples == soundnet.min_samples()
    assert tuple(facts.features) == tuple(soundnet.FEATURES)
    assert facts.default_feature == soundnet.DEFAULT_FEATURE
    objects, scenes = soundnet.build_soundnet8(facts.min_samples, places=True).output_shape
    widths = {soundnet.CONV8[0]: objects[-1], soundnet.CONV8_PLACES[0]: scenes[-1]}
    assert dict(facts.features) == {feature: widths[head]
                                    for feature, (head, _) in soundnet.FEATURES.items()}


def test_yamnet_facts_are_the_models():
    facts = towers.AUDIO["yamnet"]
    assert facts.sample_rate == yamnet.SAMPLE_RATE
    assert facts.min_samples == yamnet.min_samples()
    assert tuple(facts.features) == yamnet.FEATURES
    full = yamnet.build_yamnet(facts.min_samples, classes=True)
    for feature, width in facts.features.items():
        assert yamnet.feature_model(full, feature).output_shape == (None, width), feature


def test_the_logmel_tower_takes_any_rate_and_its_width_from_the_config():
    facts = towers.AUDIO["logmel"]
    assert (facts.sample_rate, facts.min_samples, facts.pretrained) == (None, None, False)
    assert dict(facts.features) == {"learned": None}


def test_pretrained_presets_read_their_weights_paths_from_the_table():
    for name in ("paper", "paper_yamnet"):
        config = get_config(name)
        facts = towers.AUDIO[config.audio_tower]
        assert config.audio_weights == facts.weights
        assert config.sample_rate == facts.sample_rate
        assert config.audio_feature_dim == facts.features[facts.default_feature]


def test_the_table_is_read_only():
    with pytest.raises(TypeError):
        towers.AUDIO["yamnet"].features["embedding"] = 1  # type: ignore[index]


def test_the_table_imports_nothing_of_the_project():
    """Floor 0's bottom: config and modeling both read it, so it may read neither."""
    tree = ast.parse(Path(towers.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "soundloc_tf"}
