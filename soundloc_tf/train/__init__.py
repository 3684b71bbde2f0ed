"""Floor 3: the training step (Trainer), the feature cache and run-directory I/O."""
