"""The bad-input matrix (README "Bad input"): one test per row, each checking that the
message names the offending value and that nothing was written where something could be.

Rows 13 (workdir of another config) and 14 (unwritable checkpoint directory) live beside
the checkpoint code in tests/test_train.py.
"""

import logging

import numpy as np
import pytest
from helpers import load_config, run_ssl_jax
from PIL import Image

from ssl_jax import methods, models, parallel
from ssl_jax.data import eval_pipeline, pipeline
from ssl_jax.data.sources import load_source


def _fresh(dataset: str) -> str:
    """Files the test rewrites between cases get a fresh cache entry (load_source caches)."""
    load_source.cache_clear()
    return dataset


# ----------------------------------------------------------------------------- rows 1-3


@pytest.mark.parametrize(
    "flags, expected",
    [
        (  # 1. misspelt key
            ["--config=configs/simclr.py:smoke", "--config.optim.lrr=0.1"],
            "unknown config key 'optim.lrr' in --config.optim.lrr: the config has no 'lrr'; "
            'did you mean "lr"',
        ),
        (  # 2. wrong type
            ["--config=configs/simclr.py:smoke", "--config.optim.lr=fast"],
            "flag --config.optim.lr=fast: could not convert string to float: 'fast'",
        ),
        (  # 3. unknown preset
            ["--config=configs/moco_v2.py:cifar100"],
            "flag --config=configs/moco_v2.py:cifar100: unknown config preset 'cifar100'; "
            "valid presets: digits, cifar10, imagenet, smoke",
        ),
    ],
    ids=["misspelt_key", "wrong_type", "unknown_preset"],
)
def test_bad_config_flag_is_one_line_naming_it(tmp_path, flags, expected):
    workdir = tmp_path / "run"
    out = run_ssl_jax("pretrain", *flags, f"--workdir={workdir}")
    assert out.returncode == 2, out.stderr
    assert f"ssl-jax: {expected}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


# ----------------------------------------------------------------------------- rows 4-8


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown method 'byol2'; valid methods: instdisc, cmc, moco"
    ):
        methods.get_method("byol2")


def test_unknown_backbone_lists_the_valid_ones():
    model_cfg = load_config("simclr", model__backbone="resnet9").model
    with pytest.raises(ValueError, match=r"model.backbone 'resnet9'; valid names: .*resnet18"):
        models.make_backbone(model_cfg)


@pytest.mark.parametrize(
    "dataset, message",
    [
        (
            "not_a_dataset_xyz",
            "unknown data set 'not_a_dataset_xyz'; valid: digits, colour_digits, npz:<path>",
        ),
        ("My Images", "unknown data set 'My Images'; valid: digits, colour_digits, npz:<path>"),
        ("npz:/no/such/file.npz", "npz data set file '/no/such/file.npz' does not exist"),
        ("folder:/no/such/dir", "image folder '/no/such/dir' does not exist"),
    ],
)
def test_unknown_data_set_names_it(dataset, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_source(dataset, "train")


def test_global_batch_not_divisible_by_the_devices():
    with pytest.raises(ValueError, match="global_batch_size=12 is not divisible by the 8 devices"):
        parallel.check_global_batch(12, parallel.make_mesh().devices.size)  # 8 (conftest.py)


def test_data_set_smaller_than_one_global_batch(tmp_path):
    path = tmp_path / "ten.npz"
    np.savez(path, images=np.zeros([10, 8, 8, 3], np.uint8))
    input_cfg = load_config("simclr", input__dataset=f"npz:{path}", input__global_batch_size=64)
    with pytest.raises(ValueError, match="has 10 examples, fewer than one global batch of 64"):
        pipeline.steps_per_epoch(input_cfg.input)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(method="byol2"), "unknown method 'byol2'"),
        (dict(model__backbone="resnet9"), "model.backbone 'resnet9'"),
        (dict(input__dataset="not_a_dataset_xyz"), "unknown data set 'not_a_dataset_xyz'"),
        (dict(input__global_batch_size=12), "global_batch_size=12 is not divisible by the 8"),
        (dict(input__global_batch_size=2048), "1437 examples, fewer than one global batch of 2048"),
    ],
    ids=["method", "backbone", "data_set", "batch_vs_devices", "batch_vs_data"],
)
def test_rows_4_to_8_stop_pretrain_before_the_workdir_is_written(tmp_path, overrides, message):
    from ssl_jax import train

    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train.pretrain(load_config("simclr", **overrides), str(workdir))
    assert not workdir.exists()


# ----------------------------------------------------------------------------- rows 9-10


def _save(path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def test_non_image_files_are_skipped_with_one_warning(tmp_path, caplog):
    _save(tmp_path / "cat" / "a.png", Image.new("RGB", (4, 4)))
    _save(tmp_path / "dog" / "b.jpg", Image.new("RGB", (4, 4)))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "photo.webp").write_bytes(b"RIFF")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored silently
    (tmp_path / "cat" / "._a.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden folder: not a class
    with caplog.at_level(logging.WARNING):
        src = load_source(_fresh(f"folder:{tmp_path}"), "train")
    assert (src.num_examples, src.num_classes) == (2, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 files" in warnings[0] and "notes.txt" in warnings[0]
    assert ".txt, .webp" in warnings[0] and "DS_Store" not in warnings[0]


def _palette_bmp(path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, [6, 6, 3], dtype=np.uint8)
    _save(path, Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))


def _bilevel_bmp(path) -> None:
    _save(path, Image.new("1", (6, 6), 1))


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("broken.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not a png"), "Invalid PNG"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "Input is empty"),
        ("notes.jpeg", lambda p: p.write_text("a text file named like an image"), "Unknown image"),
        ("palette.bmp", _palette_bmp, r"palette BMP with 8-bit pixels"),
        ("bilevel.bmp", _bilevel_bmp, "palette BMP with 1-bit pixels"),
    ],
)
def test_undecodable_image_file_is_an_error_naming_it(tmp_path, name, write, message):
    _save(tmp_path / "ok" / "good.png", Image.new("RGB", (4, 4), (1, 2, 3)))
    write(tmp_path / "ok" / name)
    with pytest.raises(ValueError, match=rf"cannot decode image file '.*{name}': .*{message}"):
        load_source(_fresh(f"folder:{tmp_path}"), "train")


def test_folder_of_mixed_modes_and_sizes_trains_as_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, [9, 7, 3], dtype=np.uint8)
    images = {
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "gray_alpha.png": Image.fromarray(rgb[..., :2], "LA"),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "palette.gif": Image.fromarray(rgb[:5]).convert("P", palette=Image.Palette.ADAPTIVE),
        "16bit.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray.bmp": Image.fromarray(rgb[1:, 2:, 0], "L"),  # 8-bit, gray-ramp colour table
        "big.jpg": Image.fromarray(rng.integers(0, 256, [40, 23, 3], dtype=np.uint8)),
    }
    for name, image in images.items():
        _save(tmp_path / name, image)
    src = load_source(_fresh(f"folder:{tmp_path}"), "train")
    assert src.num_examples == len(images)
    for i, path in enumerate(src.paths):
        decoded = src.get(i)["image"].numpy()
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
        if path.endswith("16bit.png"):  # 0..65535 scaled to 0..255 (PIL would clip instead)
            np.testing.assert_array_equal(decoded, np.repeat(rgb[..., :1], 3, axis=-1))
        elif path.endswith(".png"):  # lossless: the same conversion as PIL's
            np.testing.assert_array_equal(decoded, expected, err_msg=path)
    input_cfg = load_config(
        "simclr", input__dataset=f"folder:{tmp_path}", input__global_batch_size=8
    ).input
    batch = next(pipeline.pretrain_iterator(input_cfg, seed=0))
    assert batch["views"].shape == (8, 2, 16, 16, 3) and np.isfinite(batch["views"]).all()
    evals = next(eval_pipeline.eval_iterator(input_cfg, "train", global_batch_size=8))
    assert evals["image"].shape == (8, 16, 16, 3)


# ----------------------------------------------------------------------------- rows 11-12


def _write(path, **arrays) -> str:
    np.savez(path, **arrays)
    return _fresh(f"npz:{path}")


def _wrong_keys(tmp_path) -> str:
    return _write(tmp_path / "keys.npz", x=np.zeros([2, 4, 4, 3], np.uint8))


def _npy_named_npz(tmp_path) -> str:
    with open(tmp_path / "single.npz", "wb") as f:  # np.save(path) would append .npy
        np.save(f, np.zeros([2, 4, 4, 3], np.uint8))
    return _fresh(f"npz:{tmp_path / 'single.npz'}")


def _text_file(tmp_path) -> str:
    (tmp_path / "text.npz").write_text("images")
    return _fresh(f"npz:{tmp_path / 'text.npz'}")


def _no_arrays(tmp_path) -> str:
    return _write(tmp_path / "empty.npz")


def _pickled_objects(tmp_path) -> str:
    return _write(tmp_path / "objects.npz", images=np.array([None, 1], dtype=object))


@pytest.mark.parametrize(
    "make, message",
    [
        (_wrong_keys, r"keys.npz: expected key 'images' .* found keys \['x'\]"),
        (_npy_named_npz, r"single.npz: expected an .npz archive .* found a single ndarray"),
        (_text_file, r"cannot read npz data set file '.*text.npz': not an .npz archive"),
        (_pickled_objects, r"cannot read npz data set file '.*objects.npz': Object arrays"),
        (_no_arrays, r"empty.npz: expected key 'images' .* found keys \[\]"),
    ],
    ids=["wrong_keys", "npy_not_npz", "not_numpy", "pickled_objects", "no_arrays"],
)
def test_npz_with_wrong_keys_or_format_names_the_file(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_source(make(tmp_path), "train")


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=np.zeros([2, 4, 4, 3], np.float32)), r"uint8 \(0..255\); found float32"),
        (dict(images=np.zeros([2, 4, 4, 3], np.int64)), r"uint8 \(0..255\); found int64"),
        (dict(images=np.zeros([16, 16], np.uint8)), r"\[N,H,W,3\].*got shape \(16, 16\)"),
        (dict(images=np.zeros([2, 4, 4, 4], np.uint8)), r"got shape \(2, 4, 4, 4\)"),
        (
            dict(images=np.zeros([3, 4, 4, 3], np.uint8), labels=np.arange(2)),
            r"'labels' must be integers of shape \[3\]; found dtype int64 shape \(2,\)",
        ),
        (
            dict(images=np.zeros([2, 4, 4, 3], np.uint8), labels=np.zeros(2, np.float32)),
            r"'labels' must be integers .* found dtype float32",
        ),
    ],
    ids=["float_images", "int64_images", "2d_array", "rgba_channels", "labels_length", "labels_f"],
)
def test_npz_with_wrong_dtype_or_shape_names_file_and_value(tmp_path, arrays, message):
    dataset = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=rf"bad.npz: .*{message}"):
        load_source(dataset, "train")
