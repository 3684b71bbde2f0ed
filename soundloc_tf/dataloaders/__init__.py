"""Floor 1: files -> tf.data (audio features, decoding, scenes, records, importers, labels)."""
