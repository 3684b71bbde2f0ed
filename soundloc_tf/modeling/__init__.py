"""Floor 2: the image and audio towers and the attention localizer."""
