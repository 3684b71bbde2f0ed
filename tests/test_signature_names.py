"""Names the serving side writes out rather than import (it knows the model only through
the SavedModel): each must equal the library's and TensorFlow's."""

import tensorflow as tf

from serving import model_store
from soundloc_tf.inference import image_decode, signatures
from serving.studio import localize as studio_localize


def test_the_default_signature_is_tensorflows_and_the_exports_bytes_signature():
    assert model_store.DEFAULT_SIGNATURE == tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
    assert signatures.BYTES_SIGNATURE == model_store.DEFAULT_SIGNATURE


def test_the_studio_refuses_images_at_the_served_graphs_side_limit():
    assert studio_localize.MAX_IMAGE_SIDE == image_decode.MAX_IMAGE_SIDE
