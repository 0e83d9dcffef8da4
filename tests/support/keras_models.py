"""Builds and trains small Keras classifiers for the exporter tests, in its own process (TensorFlow must not share
a process with torch). Usage: python -m tests.support.keras_models OUT_DIR

Writes a ResNet-style functional classifier (residual blocks, softmax head) trained briefly on generated boards as
classifier.keras, classifier.h5 and a SavedModel directory classifier_savedmodel/, plus a Sequential logits model
sequential.keras.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

SIZE = 64


def residual_classifier(channels: int = 1, classes: int = 2):  # type: ignore[no-untyped-def]
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, channels), name="images")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters in (16, 32):
        shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False)(x)
        y = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mini_resnet")


def main(out_dir: Path) -> None:
    import keras
    import numpy as np

    from fedinspect.synthetic import classification_samples

    keras.utils.set_random_seed(0)
    images, labels = classification_samples(64, size=SIZE, seed=3)
    x = images[..., None].astype("float32") / 255.0
    model = residual_classifier()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=2, batch_size=16, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "classifier.keras")
    model.save(out_dir / "classifier.h5")
    model.export(str(out_dir / "classifier_savedmodel"), format="tf_saved_model", verbose=False)
    sequential = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    sequential.save(out_dir / "sequential.keras")
    np.save(out_dir / "probe.npy", x[:4])
    np.save(out_dir / "probe_outputs.npy", np.asarray(model(x[:4], training=False)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
