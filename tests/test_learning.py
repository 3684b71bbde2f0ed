"""A short seeded training run learns to localise: cIoU rises well above the baselines."""

import pytest

from soundloc_tf.dataloaders import data
from soundloc_tf.config import get_config
from soundloc_tf.eval.evaluation import evaluate
from soundloc_tf.train.training import Trainer


@pytest.mark.slow
def test_short_semi_supervised_run_beats_baselines(tmp_path, single_device_strategy):
    config = get_config("tiny", train_steps=150, batch_size=16, label_fraction=0.5,
                        eval_every=10_000, log_every=10_000, num_summary_images=0)
    trainer = Trainer(config, str(tmp_path), single_device_strategy, log=lambda _: None)
    before = evaluate(trainer.model, config, data.synthetic_dataset(config, config.eval_seed,
                                                                    count=128))
    trainer.train()
    after = evaluate(trainer.model, config, data.synthetic_dataset(config, config.eval_seed,
                                                                   count=128))
    centre = after["baselines"]["center_box"]
    whole = after["baselines"]["whole_image"]
    print({k: (before[k], after[k]) for k in ("mean_ciou", "pointing_game", "ciou_at_0_5")},
          centre, whole)
    assert after["pointing_game"] > 0.8 > before["pointing_game"]
    assert after["mean_ciou"] > max(centre["mean_ciou"], whole["mean_ciou"]) + 0.15
    assert after["ciou_at_0_5"] > centre["ciou_at_0_5"] + 0.3
    # The map follows the sound: with another clip's sound it points elsewhere more often.
    assert after["mismatched_sound"]["pointing_game"] < after["pointing_game"] - 0.2
