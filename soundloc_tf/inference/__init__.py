"""Floor 3: the SavedModel export (core TF ops only) and local localisation through it."""
