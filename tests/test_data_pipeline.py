"""Input pipelines: determinism, reshuffling, exact resume, process slicing, eval padding."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_sources import write_tfds_metadata

from ssl_jax.data import eval_pipeline, pipeline, recipes


def _indexed_npz(tmp_path, n: int) -> str:
    """An npz whose label is the example index, so batches reveal the sampling order."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"indexed{n}.npz"
    np.savez(path, images=rng.integers(0, 256, [n, 8, 8, 3], dtype=np.uint8), labels=np.arange(n))
    return f"npz:{path}"


def _cfg(dataset: str, batch: int = 16, **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(
            dataset=dataset,
            data_dir=None,
            train_split="train",
            eval_train_split="train",
            eval_test_split="train",
            image_size=8,
            eval_crop_fraction=1.0,
            global_batch_size=batch,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            views=dict(view1=recipes.recipe("moco_v2"), view2=recipes.recipe("digits")),
            shuffle_buffer=64,
            prefetch=2,
        )
    )
    cfg.update(overrides)
    return cfg


def _take(iterator, k: int) -> list[dict]:
    return list(itertools.islice(iterator, k))


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batch_shapes_and_determinism(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 64))
    first = _take(pipeline.pretrain_iterator(cfg, seed=3), 2)
    assert first[0]["views"].shape == (16, 2, 8, 8, 3) and first[0]["views"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32
    _assert_batches_equal(first, _take(pipeline.pretrain_iterator(cfg, seed=3), 2))
    other = _take(pipeline.pretrain_iterator(cfg, seed=4), 1)[0]
    assert not np.array_equal(other["label"], first[0]["label"])


def test_each_epoch_is_a_new_permutation(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 70))  # 70 // 16 = 4 steps, remainder dropped
    assert pipeline.steps_per_epoch(cfg) == 4
    labels = [b["label"] for b in _take(pipeline.pretrain_iterator(cfg, seed=0), 8)]
    epoch0, epoch1 = np.concatenate(labels[:4]), np.concatenate(labels[4:])
    assert len(set(epoch0)) == 64 and len(set(epoch1)) == 64  # no repeats within an epoch
    assert set(epoch0) <= set(range(70))
    assert not np.array_equal(epoch0, epoch1)


def test_resume_is_bitwise_exact_across_epochs(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 64))  # 4 steps per epoch
    full = _take(pipeline.pretrain_iterator(cfg, seed=1), 10)
    for start in (3, 6):
        resumed = _take(pipeline.pretrain_iterator(cfg, seed=1, start_step=start), 10 - start)
        _assert_batches_equal(full[start:], resumed)


def test_process_slices_concatenate_to_the_global_batch(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 64))
    whole = _take(pipeline.pretrain_iterator(cfg, seed=2, start_step=2), 4)
    parts = [
        _take(
            pipeline.pretrain_iterator(cfg, seed=2, start_step=2, process_index=p, process_count=2),
            4,
        )
        for p in range(2)
    ]
    assert parts[0][0]["views"].shape[0] == 8
    for t in range(4):
        joined = {k: np.concatenate([parts[0][t][k], parts[1][t][k]]) for k in whole[t]}
        _assert_batches_equal([whole[t]], [joined])


def test_data_set_smaller_than_a_batch_is_an_error(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 10), batch=16)
    with pytest.raises(ValueError, match="10 examples, fewer than one global batch of 16"):
        pipeline.pretrain_iterator(cfg, seed=0)
    with pytest.raises(ValueError, match="batch size 16 .* process count 3"):
        pipeline.steps_per_epoch(_cfg(_indexed_npz(tmp_path, 64)), process_count=3)


def test_eval_covers_every_example_once_with_padding(tmp_path):
    cfg = _cfg(_indexed_npz(tmp_path, 37))
    batches = list(eval_pipeline.eval_iterator(cfg, "train", global_batch_size=16))
    assert len(batches) == 3 == eval_pipeline.eval_num_batches(cfg, "train", global_batch_size=16)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert mask.sum() == 37 and not mask[37:].any()
    np.testing.assert_array_equal(labels[mask], np.arange(37))
    assert not images[~mask].any() and images.shape == (48, 8, 8, 3)

    parts = [
        list(
            eval_pipeline.eval_iterator(
                cfg, "train", global_batch_size=16, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(parts[0]) == len(parts[1]) == 3  # SPMD: same count on every process
    for t in range(3):
        joined = {k: np.concatenate([parts[0][t][k], parts[1][t][k]]) for k in batches[t]}
        _assert_batches_equal([batches[t]], [joined])


def test_digits_eval_split_sizes():
    cfg = _cfg("digits", batch=64)
    assert eval_pipeline.num_eval_examples(cfg, "test") == 360
    assert eval_pipeline.eval_num_batches(cfg, "test", global_batch_size=64) == 6


def test_tfds_stream_pretrain_resume_and_eval(tmp_path):
    meta = write_tfds_metadata(tmp_path, splits={"train": 40, "test": 12})
    cfg = _cfg("cifar10", batch=8, eval_crop_fraction=0.875, shuffle_buffer=16)
    with tfds.testing.mock_data(num_examples=40, data_dir=meta):
        assert pipeline.steps_per_epoch(cfg) == 5
        full = _take(pipeline.pretrain_iterator(cfg, seed=0), 7)
        assert full[0]["views"].shape == (8, 2, 8, 8, 3)
        _assert_batches_equal(
            full[3:], _take(pipeline.pretrain_iterator(cfg, seed=0, start_step=3), 4)
        )
        epoch0 = np.concatenate([b["views"] for b in full[:5]])
        assert not np.array_equal(epoch0[:8], full[5]["views"])  # epoch 1 differs

        local = _take(pipeline.pretrain_iterator(cfg, seed=0, process_index=1, process_count=2), 6)
        assert local[0]["views"].shape == (4, 2, 8, 8, 3) and len(local) == 6

        for p in range(2):
            batches = list(
                eval_pipeline.eval_iterator(
                    cfg, "test", global_batch_size=8, process_index=p, process_count=2
                )
            )
            assert len(batches) == 2  # 6 examples per process, 4 per batch
            assert sum(b["mask"].sum() for b in batches) == 6
            assert batches[0]["image"].shape == (4, 8, 8, 3)


def test_folder_images_of_mixed_sizes_flow_through(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (mode, size) in enumerate([("RGB", (9, 7)), ("L", (12, 12)), ("RGBA", (6, 10))] * 2):
        pixels = rng.integers(0, 256, [size[1], size[0], len(mode)], dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(
            tmp_path / f"{i}.png"
        )
    cfg = _cfg(f"folder:{tmp_path}", batch=4, eval_crop_fraction=0.875)
    batch = next(pipeline.pretrain_iterator(cfg, seed=0))
    assert batch["views"].shape == (4, 2, 8, 8, 3) and (batch["label"] == -1).all()
    evals = list(eval_pipeline.eval_iterator(cfg, "train", global_batch_size=4))
    assert len(evals) == 2 and evals[1]["mask"].tolist() == [True, True, False, False]
