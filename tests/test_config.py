"""Presets, overrides and validation messages."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from soundloc_tf.config import DEFAULT_PRESET, PRESETS, Config, get_config

ROOT = Path(__file__).resolve().parent.parent


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


def test_one_default_preset_for_the_library_and_the_command_lines():
    """get_config() and every command line's --preset start from DEFAULT_PRESET."""
    assert DEFAULT_PRESET == "tiny" and DEFAULT_PRESET in PRESETS
    assert get_config() == get_config(DEFAULT_PRESET)
    # tools/common.py's define_config_flags(default_preset=...), read without importing a
    # command line: either DEFAULT_PRESET itself or its value.
    tree = ast.parse((ROOT / "tools" / "common.py").read_text())
    define = next(node for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef) and node.name == "define_config_flags")
    default = define.args.defaults[-1]
    assert (getattr(default, "value", None) == DEFAULT_PRESET
            or getattr(default, "attr", None) == "DEFAULT_PRESET")


def test_presets_name_only_config_fields_and_depart_from_config_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    for name, preset in PRESETS.items():
        assert set(preset) <= set(fields), name
        assert any(fields[key] != value for key, value in preset.items()), name


@pytest.mark.parametrize("preset", [None, *sorted(PRESETS)])
def test_a_config_json_written_by_this_code_loads_with_identical_fields(tmp_path, preset):
    """A run directory's config.json (every field, plus run_flags) reads back unchanged, so
    old runs resume and evaluate: the trainer writes it this way (train/training.py)."""
    from soundloc_tf.train.run_dir import load_saved_config

    config = Config() if preset is None else get_config(preset)
    record = {**dataclasses.asdict(config), "run_flags": {"tower_mode": "fine_tuned"}}
    (tmp_path / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    loaded = load_saved_config(str(tmp_path))
    assert loaded == config
    assert dataclasses.asdict(loaded) == dataclasses.asdict(config)
