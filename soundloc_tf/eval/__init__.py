"""Floor 3: a model's maps scored with cIoU, AUC and the pointing game; evaluation plots."""
