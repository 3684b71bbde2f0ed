"""soundloc_tf: where a sound comes from in a picture (Senocak et al., CVPR 2018).

Data flows one way, and so do the imports: a folder imports its own floor or a lower one.

  floor 0  config.py (the paper's defaults and presets), losses.py, metrics.py,
           protocols.py (the peers' evaluation rules), visualize.py, tf_logs.py
  floor 1  dataloaders/  files -> tf.data: audio features, decoding, scenes, records,
                         importers, annotation layers, negatives
           realset/      the real photo + recording set, rebuilt from registry packages
  floor 2  modeling/     the two towers and the attention localizer (models.build_model),
                         SoundNet-8, the int8 image tower
  floor 3  train/        the Trainer, the feature cache, run-directory I/O
           eval/         cIoU/AUC/pointing over a model's maps, evaluation plots
           inference/    the SavedModel export and local localisation
           experiments/  each experiment's settings (command, cost); within_category and
                         photo_eval run the real-photo validation from the library
  floor 4  soundloc_tf.tools (the command lines, tools/ in the repository) and
           soundloc_tf.serving (client, dev server, studio; serving/ in the repository)

The public entry points: `config.get_config`, `modeling.models.build_model`,
`train.training.Trainer`, `eval.evaluation.evaluate`, `inference.export.export_model`,
`inference.localize.Localizer`. Nothing is imported here, so `import soundloc_tf.config`
stays free of TensorFlow.
"""
