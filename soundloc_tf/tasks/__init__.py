"""Floor 3, above train/, eval/ and inference/: the tasks (TF Model Garden's `tasks/`).

A task owns one kind of work end to end: `localization.LocalizationTask` builds the model
(without pretrained weights where a checkpoint supplies every one), the inputs (synthetic
scenes, one or several record sets, the feature cache), validation and the training loop;
`evaluation` scores a trained run. The command lines only parse flags and call a task; the
experiments (soundloc_tf/experiments/) run tasks.
"""
