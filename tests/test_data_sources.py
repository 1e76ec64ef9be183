"""Data sources: digits, npz, image folders and (mocked, offline) tfds."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ssl_jax.data import tfds_source
from ssl_jax.data.sources import load_source


def _get(source, i):
    return {k: v.numpy() for k, v in source.get(tf.constant(i)).items()}


def write_tfds_metadata(root, name="cifar10", splits=None):
    """Minimal dataset_info.json so a mocked tfds builder knows its split sizes offline."""
    splits = splits or {"train": 40, "test": 12}
    version = tfds.builder(name, data_dir=str(root / "absent")).version
    path = root / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    info = {
        "name": name,
        "version": str(version),
        "splits": [
            {"name": k, "shardLengths": [str(v)], "numBytes": "0"} for k, v in splits.items()
        ],
    }
    (path / "dataset_info.json").write_text(json.dumps(info))
    return str(root)


def test_digits_shapes_dtype_and_splits():
    train = load_source("digits", "train")
    test = load_source("digits", "test")
    assert (train.num_examples, test.num_examples) == (1437, 360)
    assert train.num_classes == 10 and train.random_access
    assert train.images.shape == (1437, 8, 8, 3) and train.images.dtype == np.uint8
    assert train.images.max() == 255
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])  # gray tiled
    ex = _get(test, 0)
    assert ex["image"].shape == (8, 8, 3) and ex["label"].dtype == np.int32


def test_array_split_slicing():
    train = load_source("digits", "train")
    head = load_source("digits", "train[:100]")
    tail = load_source("digits", "train[100:]")
    pct = load_source("digits", "train[10%:50%]")
    test_head = load_source("digits", "test[:10]")
    assert (head.num_examples, tail.num_examples) == (100, 1337)
    np.testing.assert_array_equal(tail.images[0], train.images[100])
    assert pct.num_examples == 719 - 144  # round(143.7)=144, round(718.5)=719
    np.testing.assert_array_equal(pct.images[0], train.images[144])
    assert test_head.num_examples == 10
    np.testing.assert_array_equal(test_head.labels, load_source("digits", "test").labels[:10])


def test_bad_split_names_the_split():
    with pytest.raises(ValueError, match="'validation'"):
        load_source("digits", "validation")
    with pytest.raises(ValueError, match="no examples"):
        load_source("digits", "train[5:5]")


def test_npz_gray_with_labels_and_rgb_without(tmp_path):
    gray = tmp_path / "gray.npz"
    np.savez(
        gray, images=np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7), labels=[0, 2, 1, 2, 0]
    )
    src = load_source(f"npz:{gray}", "train[1:]")
    assert src.num_examples == 4 and src.num_classes == 3
    assert src.images.shape == (4, 6, 7, 3)
    np.testing.assert_array_equal(_get(src, 0)["label"], 2)

    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros([3, 4, 4, 3], np.uint8))
    src = load_source(f"npz:{rgb}", "train")
    assert src.num_classes is None and list(src.labels) == [-1, -1, -1]


def _save(path, mode, size, color):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_with_class_subfolders_mixed_formats(tmp_path):
    _save(tmp_path / "cat" / "a.png", "RGB", (5, 4), (10, 20, 30))
    _save(tmp_path / "cat" / "b.png", "L", (6, 6), 77)
    _save(tmp_path / "dog" / "c.png", "RGBA", (3, 7), (200, 100, 50, 128))
    _save(tmp_path / "dog" / "d.bmp", "RGB", (4, 4), (1, 2, 3))
    _save(tmp_path / "dog" / "e.jpg", "RGB", (8, 8), (0, 255, 0))
    _save(tmp_path / "dog" / "f.gif", "L", (4, 5), 9)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    src = load_source(f"folder:{tmp_path}", "train")
    assert src.num_examples == 6 and src.num_classes == 2 and src.random_access
    assert list(src.labels) == [0, 0, 1, 1, 1, 1]
    a, b, c = _get(src, 0), _get(src, 1), _get(src, 2)
    assert a["image"].shape == (4, 5, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"][0, 0], [10, 20, 30])
    np.testing.assert_array_equal(b["image"][0, 0], [77, 77, 77])  # gray -> RGB
    np.testing.assert_array_equal(c["image"][0, 0], [200, 100, 50])  # RGBA -> RGB
    assert _get(src, 5)["image"].shape == (5, 4, 3)  # gif, first frame


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", "RGB", (4, 4), (i, i, i))
    src = load_source(f"folder:{tmp_path}", "train[:2]")
    assert src.num_examples == 2 and src.num_classes is None
    assert list(src.labels) == [-1, -1]


def test_tfds_source_streams_encoded_images_offline(tmp_path):
    meta = write_tfds_metadata(tmp_path)
    with tfds.testing.mock_data(num_examples=40, data_dir=meta):
        src = load_source("cifar10", "train[:30]", data_dir="/nonexistent")
        assert not src.random_access
        assert (src.num_examples, src.num_classes) == (30, 10)
        assert src.process_num_examples(1, 3) == 10
        ex = next(iter(src.stream(shuffle_seed=None)))
        assert ex["image"].dtype == tf.string  # SkipDecoding: decoded after skip
        image = src.decode(ex)["image"]
        assert image.shape == (32, 32, 3) and image.dtype == tf.uint8
        assert ex["label"].dtype == tf.int32


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not prepared.*never downloads"):
        tfds_source.load_tfds("cifar10", "train", str(tmp_path))
