"""The Keras peer of `bcc-bench mode=epochs`: the original project's training recipe in Keras/TensorFlow, timed.

`bcc-bench mode=epochs keras_python=/path/to/python` runs this file (benchmarks/bench_keras.py, in a source checkout:
a peer script, not part of the package) in that separate Python, which has TensorFlow (the project's own
environment does not, and must not). It is standalone on purpose: it imports neither
torch nor anything from bcc_lightning, and imports TensorFlow only inside functions, so that importing the module
without TensorFlow (linting, test collection) works.

The recipe, as the original Keras project trained:

* data: `ROOT/train/{B,M}` and `ROOT/val/{B,M}` images, read with
  `ImageDataGenerator(rescale=1./255).flow_from_directory(dir, target_size=(S, S), batch_size=32,
  class_mode='binary')` (`--loader generator`, the default; no online augmentation, since the original augmented
  before splitting), or with a tuned Keras input pipeline, `image_dataset_from_directory(..., label_mode='binary')`
  `.map(rescale).prefetch(AUTOTUNE)` (`--loader tfdata`);
* model: `keras.applications.<X>(weights=None, include_top=False)` + GlobalAveragePooling2D + Dense(1, sigmoid),
  binary cross-entropy, accuracy: MobileNetV2 and DenseNet121 at 224 px with Adam 1e-4, InceptionV3 at 299 px with
  RMSprop 1e-5;
* `model.fit(train, validation_data=val, epochs=N)`, each epoch timed from `on_epoch_begin` to `on_epoch_end`
  (validation runs before `on_epoch_end`, so it is included, as in bcc-bench's other rows).

Usage: `python benchmarks/bench_keras.py --root ROOT [--epochs 3] [--batch-size 32]
[--model mobilenetv2|densenet121|inceptionv3] [--loader generator|tfdata] [--json OUT.json] [--threads N]
[--seed 0]`. The result (seconds per epoch, the steady state = median of the epochs after the first, TF/Keras
versions, image counts) goes to `--json`, written atomically, and a one-line summary to stdout. Bad input exits with
code 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CLASSES = ("B", "M")  # benign -> 0, malignant -> 1, as flow_from_directory's alphabetical order gave the original
SPLITS = ("train", "val")
# Extensions both loaders read (flow_from_directory and image_dataset_from_directory each accept a few more).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# name -> (keras.applications attribute, input size, optimizer, learning rate), the original's three runs.
RECIPES: dict[str, tuple[str, int, str, float]] = {
    "mobilenetv2": ("MobileNetV2", 224, "adam", 1e-4),
    "densenet121": ("DenseNet121", 224, "adam", 1e-4),
    "inceptionv3": ("InceptionV3", 299, "rmsprop", 1e-5),
}
LOADERS = ("generator", "tfdata")


class InputError(Exception):
    """Bad arguments or data: reported as one paragraph on stderr with exit code 2."""


def count_images(root: Path) -> dict[str, int]:
    """Images per split under `root/{train,val}/{B,M}`; raises InputError naming what is missing or empty."""
    if not root.is_dir():
        raise InputError(f"--root {root} is not a folder. Point it at a folder with train/B, train/M, val/B and val/M "
                         f"holding JPEGs (e.g. the output of bcc-prepare).")
    counts: dict[str, int] = {}
    for split in SPLITS:
        counts[split] = 0
        for cls in CLASSES:
            folder = root / split / cls
            if not folder.is_dir():
                raise InputError(f"{folder} is missing. The Keras peer needs {root}/{{train,val}}/{{B,M}} folders of "
                                 f"images (one folder per class, as flow_from_directory reads them).")
            n = sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if n == 0:
                raise InputError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)}). Each of "
                                 f"{root}/{{train,val}}/{{B,M}} needs at least one.")
            counts[split] += n
    return counts


def image_data_generator_class() -> tuple[Any, str]:
    """Keras's ImageDataGenerator and where it came from: in Keras 3 it survives only as a legacy class, exported as
    `tf.keras.preprocessing.image.ImageDataGenerator` (the module is keras.src.legacy.preprocessing.image)."""
    import tensorflow as tf

    try:
        cls = tf.keras.preprocessing.image.ImageDataGenerator
        return cls, f"tf.keras.preprocessing.image.ImageDataGenerator ({cls.__module__})"
    except AttributeError:
        pass
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator

        return ImageDataGenerator, "keras.src.legacy.preprocessing.image.ImageDataGenerator"
    except ImportError as error:
        raise InputError("This Keras has no ImageDataGenerator (neither tf.keras.preprocessing.image nor "
                         "keras.src.legacy.preprocessing.image). Use --loader tfdata, or a TensorFlow 2.x with "
                         "Keras <= 3.x that keeps the legacy class.") from error


def make_loaders(root: Path, loader: str, size: int, batch_size: int, seed: int) -> tuple[Any, Any, str]:
    """(train, val, source): the original's generators, or the tf.data pipeline; `source` names the API used."""
    import tensorflow as tf

    if loader == "generator":
        generator_cls, source = image_data_generator_class()
        datagen = generator_cls(rescale=1.0 / 255)
        common = {"target_size": (size, size), "batch_size": batch_size, "class_mode": "binary",
                  "classes": list(CLASSES)}
        train = datagen.flow_from_directory(str(root / "train"), shuffle=True, seed=seed, **common)
        val = datagen.flow_from_directory(str(root / "val"), shuffle=False, **common)
        return train, val, source

    def dataset(split: str, shuffle: bool) -> Any:
        ds = tf.keras.utils.image_dataset_from_directory(
            str(root / split), labels="inferred", label_mode="binary", class_names=list(CLASSES),
            image_size=(size, size), batch_size=batch_size, shuffle=shuffle, seed=seed, verbose=False)
        return ds.map(lambda x, y: (x / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    return dataset("train", True), dataset("val", False), "tf.keras.utils.image_dataset_from_directory"


def build_model(name: str) -> Any:
    """The original's head on a randomly initialised backbone (weights=None: nothing is downloaded), compiled."""
    import tensorflow as tf

    attribute, size, optimizer, lr = RECIPES[name]
    keras = tf.keras
    backbone = getattr(keras.applications, attribute)(weights=None, include_top=False, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    output = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs=backbone.input, outputs=output)
    opt = keras.optimizers.Adam(learning_rate=lr) if optimizer == "adam" else keras.optimizers.RMSprop(learning_rate=lr)
    model.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return model


def epoch_timer() -> Any:
    """A Keras callback whose `.seconds` lists each epoch's wall time, on_epoch_begin -> on_epoch_end (with val)."""
    import tensorflow as tf

    class EpochTimer(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path.tmp`, then rename it over `path`: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(root: Path, epochs: int, batch_size: int, model_name: str, loader: str, threads: int | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Train `model_name` on `root` for `epochs` epochs with the original recipe; the timings and versions."""
    counts = count_images(root)
    try:
        import tensorflow as tf
    except ImportError as error:
        raise InputError(f"TensorFlow is not importable from {sys.executable} ({error}). Run this script with a "
                         f"Python that has it, e.g. a venv with `pip install tensorflow-cpu`.") from error
    if threads:  # must happen before TensorFlow's runtime starts (i.e. before any op runs)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.keras.utils.set_random_seed(seed)
    size = RECIPES[model_name][1]
    train, val, source = make_loaders(root, loader, size, batch_size, seed)
    model = build_model(model_name)
    timer = epoch_timer()
    # fit's shuffle=True reshuffles the generator's batch order each epoch (as Keras 2 did with a Sequence); a
    # tf.data pipeline shuffles itself, and fit would only warn that it ignores the flag.
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[timer], shuffle=loader == "generator")
    seconds = [float(s) for s in timer.seconds]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "seconds_per_epoch": seconds,
        "steady_state": steady,
        "tensorflow": tf.__version__,
        "keras": str(getattr(tf.keras, "__version__", None) or _keras_version()),
        "model": model_name,
        "loader": loader,
        "loader_api": source,
        "image_size": size,
        "batch_size": batch_size,
        "epochs": epochs,
        "train_images": counts["train"],
        "val_images": counts["val"],
        # 0: TensorFlow's default (it picks from the visible cores).
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "cpu_count": os.cpu_count(),
    }


def _keras_version() -> str:
    import keras

    return str(keras.__version__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="folder with train/{B,M} and val/{B,M} images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train and time (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32, as the original)")
    parser.add_argument("--model", choices=sorted(RECIPES), default="mobilenetv2",
                        help="backbone and its recipe (default mobilenetv2)")
    parser.add_argument("--loader", choices=LOADERS, default="generator",
                        help="generator: ImageDataGenerator.flow_from_directory (the original); "
                             "tfdata: image_dataset_from_directory + map + prefetch")
    parser.add_argument("--json", type=Path, default=None, help="write the result here (atomically)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: TensorFlow's choice)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (shuffling, initial weights)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr
    try:
        if args.epochs < 1:
            raise InputError(f"--epochs must be at least 1; got {args.epochs}.")
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1; got {args.batch_size}.")
        if args.threads is not None and args.threads < 0:
            raise InputError(f"--threads must be >= 1 (0 or left out: TensorFlow's default); got {args.threads}.")
        result = run(args.root, args.epochs, args.batch_size, args.model, args.loader, args.threads, args.seed)
    except InputError as error:
        print(f"bench_keras: {error}", file=sys.stderr)
        return 2
    if args.json is not None:
        write_json_atomic(args.json, result)
    epochs = ", ".join(f"{s:.1f}" for s in result["seconds_per_epoch"])
    print(f"keras {result['model']} ({result['loader']} loader, {result['image_size']} px, batch "
          f"{result['batch_size']}, {result['train_images']}+{result['val_images']} images): steady state "
          f"{result['steady_state']:.2f} s/epoch (epochs: {epochs}); TensorFlow {result['tensorflow']}, "
          f"Keras {result['keras']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
