"""The distributed training step, resume after interruption, and learning itself."""

import importlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.dataloaders import data
from soundloc_tf.config import get_config
from soundloc_tf.train.run_dir import restore_model
from soundloc_tf.train.training import Trainer, all_finite, learning_rate_at, make_optimizer

QUIET = dict(eval_every=10_000, num_summary_images=0, log_every=10_000)


def _config(**overrides):
    return get_config("tiny", batch_size=8, label_fraction=0.5, **{**QUIET, **overrides})


def _silent(_):
    pass


def _mirrored_and_single_step(objective: str, workdir: str) -> dict:
    """One SGD step under MirroredStrategy (two logical CPUs) and under one device.

    Returns both steps' loss terms and the largest weight difference after them.
    """
    from soundloc_tf.train.training import make_strategy

    # SGD: the weight change is proportional to the gradient (Adam's first step
    # is ~lr * sign(g), which amplifies float round-off of near-zero gradients).
    # "infonce_same_class": InfoNCE without same-class negatives, gathered across replicas.
    loss = {"infonce_same_class": {"unsupervised_loss": "infonce",
                                   "infonce_same_class_negatives": False}}.get(
        objective, {"unsupervised_loss": objective})
    config = _config(**loss, optimizer="sgd", learning_rate=0.1)
    mirrored_strategy = make_strategy()
    single_strategy = tf.distribute.OneDeviceStrategy(tf.config.list_logical_devices("CPU")[0].name)
    single = Trainer(config, f"{workdir}/one", single_strategy, log=_silent)
    mirrored = Trainer(config, f"{workdir}/two", mirrored_strategy, log=_silent)
    mirrored.model.set_weights(single.model.get_weights())

    def one_step(trainer):
        iterator = iter(trainer.strategy.experimental_distribute_dataset(
            trainer.train_dataset()))
        terms, _ = trainer.train_step(iterator)
        return {k: float(v) for k, v in terms.items()}

    a, b = one_step(single), one_step(mirrored)
    differences = [np.abs(wa - wb) - 1e-4 * np.abs(wb)
                   for wa, wb in zip(single.model.get_weights(), mirrored.model.get_weights())]
    return {"replicas": mirrored.strategy.num_replicas_in_sync, "single": a, "mirrored": b,
            "weight_excess": float(max(d.max() for d in differences))}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["triplet", "infonce", "infonce_same_class", "hard_way"])
def test_mirrored_step_on_two_cpus_equals_single_device_step(tmp_path, objective):
    # In a fresh interpreter: in the suite's process this step runs collectives after
    # hundreds of other tests, and a TensorFlow abort there (once, in CI) took the whole
    # session down. Alone it does not depend on what they left behind, and a crash fails
    # only this test, with TensorFlow's message.
    result = subprocess.run([sys.executable, __file__, objective, str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    step = json.loads(result.stdout.strip().splitlines()[-1])
    assert step["replicas"] == 2
    a, b = step["single"], step["mirrored"]
    assert a["supervised"] > 0 and a["unsupervised"] > 0
    for key in ("total", "unsupervised", "supervised"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    # |single - mirrored| <= 1e-6 + 1e-4 |mirrored|; the hard-way masks' slope (1 / 0.03)
    # multiplies the round-off of the replicas' summation order in its gradient.
    assert step["weight_excess"] <= (5e-6 if objective == "hard_way" else 1e-6)


@pytest.mark.slow
def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
        tmp_path, single_device_strategy):
    config = _config(train_steps=6, checkpoint_every=2)
    straight = Trainer(config, str(tmp_path / "straight"), single_device_strategy, log=_silent)
    straight.train()

    interrupted_dir = str(tmp_path / "interrupted")

    def interrupt_at_step_3(message):
        if message.startswith("step 3/"):
            raise KeyboardInterrupt  # after step 3 ran, before it was checkpointed

    first = Trainer(config.replace(log_every=1), interrupted_dir, single_device_strategy,
                    log=interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    messages = []
    resumed = Trainer(config, interrupted_dir, single_device_strategy, log=messages.append)
    assert int(resumed.step.numpy()) == 2
    assert any("Resumed" in m and "step 2" in m for m in messages)
    resumed.train()
    assert int(resumed.step.numpy()) == 6
    # Same seed, same scenes at the same steps: the same weights as the straight run.
    for wa, wb in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    saved_config, _, step = restore_model(interrupted_dir)
    assert step == 6 and saved_config == config


def test_resume_refuses_a_different_model_config(tmp_path, single_device_strategy):
    Trainer(_config(), str(tmp_path), single_device_strategy, log=_silent)
    with pytest.raises(ValueError, match="differing fields \\['attention_temperature'\\]"):
        Trainer(_config(attention_temperature=0.5), str(tmp_path), single_device_strategy,
                log=_silent)


@pytest.mark.slow
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, single_device_strategy):
    config = _config(train_steps=1, checkpoint_every=1)
    trainer = Trainer(config, str(tmp_path), single_device_strategy, log=_silent)
    trainer.train()
    data_file = next((tmp_path / "checkpoints").glob("ckpt-1.data*"))
    data_file.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not restore the checkpoint"):
        Trainer(config, str(tmp_path), single_device_strategy, log=_silent)
    with pytest.raises(ValueError, match="could not restore the checkpoint"):
        restore_model(str(tmp_path))


def test_saved_config_round_trips(tmp_path, single_device_strategy):
    config = _config()
    Trainer(config, str(tmp_path), single_device_strategy, log=_silent)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["image_size"] == 96 and saved["tiny_image_widths"] == [8, 16, 32, 64]


def test_logged_cosine_rate_matches_keras_cosine_decay():
    config = _config(lr_schedule="cosine", train_steps=100, learning_rate=1e-3)
    reference = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=100)
    assert isinstance(make_optimizer(config)._learning_rate,
                      keras.optimizers.schedules.CosineDecay)
    for step in (0, 25, 50, 100, 150):
        assert learning_rate_at(config, step) == pytest.approx(float(reference(step)), rel=1e-5)
    assert learning_rate_at(config, 100) == pytest.approx(0.0, abs=1e-12)


def test_validation_data_without_boxes_is_refused_before_training(tmp_path,
                                                                 single_device_strategy):
    config = get_config("tiny", batch_size=4, train_steps=1)
    unlabelled = data.synthetic_dataset(config, config.eval_seed, count=4).map(
        lambda element: {**element, "boxes": element["boxes"] * 0.0})
    with pytest.raises(ValueError, match="validation data has no annotated box"):
        Trainer(config, str(tmp_path), single_device_strategy, validation=unlabelled,
                log=lambda message: None)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("compiled", [False, True])
def test_all_finite_finds_one_bad_element_in_any_tensor(bad, compiled):
    tensors = [tf.fill([40, 30], 3.0e38), tf.zeros([7]), tf.ones([2, 3, 5], tf.float16),
               tf.fill([3], tf.constant(1e300, tf.float64))]
    check = tf.function(all_finite, jit_compile=True) if compiled else all_finite
    assert bool(check(tensors))  # large finite values do not overflow the check
    for i, position in ((0, [39, 29]), (1, [0]), (2, [1, 2, 4]), (3, [2])):
        broken = list(tensors)
        broken[i] = tf.tensor_scatter_nd_update(
            tensors[i], [position], tf.constant([bad], tensors[i].dtype))
        assert not bool(check(broken)), (i, bad)


if __name__ == "__main__":
    # The child of test_mirrored_step_on_two_cpus_equals_single_device_step. conftest
    # splits the CPU into the suite's two logical devices, before TensorFlow uses them.
    importlib.import_module("conftest")
    print(json.dumps(_mirrored_and_single_step(sys.argv[1], sys.argv[2])))
