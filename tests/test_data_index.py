"""``batch['index']``: every pre-training example's row in its split, stable across epochs,
resume and process counts, for array sources and real (prepared, sharded) tfds data sets.

Image ``i`` is constant with every pixel ``i``; the views only crop and flip (the MAE
recipe, mean 0, std 1), so each view's pixels still read ``i / 255`` and reveal the image.
"""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssl_jax.data import eval_pipeline, pipeline, recipes

TFDS_ROWS, TFDS_SHARDS = 50, 3


def _constant_npz(tmp_path, n: int) -> str:
    """Unlabelled images ``[n, 6, 6, 3]``; image ``i`` is all ``i`` (n <= 256)."""
    path = tmp_path / f"constant{n}.npz"
    np.savez(
        path,
        images=np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], [n, 6, 6, 3]),
    )
    return f"npz:{path}"


def _cfg(dataset: str, batch: int = 16, **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(
            dataset=dataset,
            data_dir=None,
            train_split="train",
            image_size=4,
            global_batch_size=batch,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            views=dict(view1=recipes.recipe("mae"), view2=recipes.recipe("mae")),
            shuffle_buffer=64,
            prefetch=2,
        )
    )
    cfg.update(overrides)
    return cfg


def _take(iterator, k: int) -> list[dict]:
    return list(itertools.islice(iterator, k))


def _image_ids(views: np.ndarray) -> np.ndarray:
    """``i`` of the constant image each row's views were cropped from; views [b, V, s, s, 3]."""
    pixels = np.rint(views.reshape(len(views), -1) * 255)  # [b, V*s*s*3]
    np.testing.assert_array_equal(pixels, np.broadcast_to(pixels[:, :1], pixels.shape))
    return pixels[:, 0].astype(np.int64)


def _indices(batches: list[dict]) -> np.ndarray:
    return np.concatenate([b["index"] for b in batches])


@pytest.mark.parametrize(("split", "first"), [("train", 0), ("train[100:200]", 100)])
def test_index_is_the_row_of_the_image_in_its_split(tmp_path, split, first):
    cfg = _cfg(_constant_npz(tmp_path, 240), train_split=split)
    batches = _take(pipeline.pretrain_iterator(cfg, seed=0), 3)
    assert batches[0]["index"].shape == (16,) and batches[0]["index"].dtype == np.int32
    for batch in batches:
        np.testing.assert_array_equal(_image_ids(batch["views"]), batch["index"] + first)
    assert _indices(batches).max() < eval_pipeline.num_eval_examples(cfg, split)


def test_each_epoch_permutes_the_indices_and_images_keep_theirs(tmp_path):
    cfg = _cfg(_constant_npz(tmp_path, 64))  # 4 steps per epoch, no remainder
    batches = _take(pipeline.pretrain_iterator(cfg, seed=1), 8)
    epoch0, epoch1 = _indices(batches[:4]), _indices(batches[4:])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(64))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(64))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled, yet each image keeps its index
    for batch in batches:
        np.testing.assert_array_equal(_image_ids(batch["views"]), batch["index"])


def test_an_epoch_with_a_remainder_has_no_repeated_index(tmp_path):
    cfg = _cfg(_constant_npz(tmp_path, 70))  # 70 // 16 = 4 steps: 64 of the 70 rows
    epoch = _indices(_take(pipeline.pretrain_iterator(cfg, seed=1), 4))
    assert len(set(epoch.tolist())) == 64 and 0 <= epoch.min() and epoch.max() < 70


def test_resume_yields_the_same_index(tmp_path):
    cfg = _cfg(_constant_npz(tmp_path, 64))
    full = _take(pipeline.pretrain_iterator(cfg, seed=2), 10)
    for start in (3, 6):
        resumed = _take(pipeline.pretrain_iterator(cfg, seed=2, start_step=start), 10 - start)
        np.testing.assert_array_equal(_indices(resumed), _indices(full[start:]))


def test_process_slices_concatenate_to_the_global_index(tmp_path):
    cfg = _cfg(_constant_npz(tmp_path, 64))
    whole = _take(pipeline.pretrain_iterator(cfg, seed=3, start_step=2), 4)
    parts = [
        _take(
            pipeline.pretrain_iterator(cfg, seed=3, start_step=2, process_index=p, process_count=2),
            4,
        )
        for p in range(2)
    ]
    for t in range(4):
        joined = np.concatenate([parts[0][t]["index"], parts[1][t]["index"]])
        np.testing.assert_array_equal(joined, whole[t]["index"])


def test_multicrop_batches_carry_the_index(tmp_path):
    views = dict(view1=recipes.recipe("mae"), view2=recipes.recipe("mae", size=2))
    cfg = _cfg(_constant_npz(tmp_path, 32), batch=8, views=views)
    batch = next(pipeline.pretrain_iterator(cfg, seed=0))
    assert sorted(batch) == ["global_views", "index", "label", "local_views"]
    np.testing.assert_array_equal(_image_ids(batch["global_views"]), batch["index"])
    np.testing.assert_array_equal(_image_ids(batch["local_views"]), batch["index"])


def test_synthetic_batch_has_the_index():
    cfg = _cfg("digits", batch=8)
    assert pipeline.batch_spec(cfg)["index"] == ((8,), "int32")
    index = pipeline.synthetic_batch(cfg)["index"]
    assert index.dtype == np.int32
    np.testing.assert_array_equal(index, np.arange(8))


# ----------------------------------------------------------------------------- tfds


class TinyRows(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Image ``i`` all ``i`` with label ``i``; tfds shuffles them into its shards on write."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(4, 4, 3)),
            "label": tfds.features.ClassLabel(num_classes=TFDS_ROWS),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(TFDS_ROWS):
            yield i, {"image": np.full([4, 4, 3], i, np.uint8), "label": i}


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory) -> str:
    """The data_dir of a prepared 3-shard tfds data set ``tiny_rows``, read back from its files
    (not registered: ``tfds.builder`` finds it in ``data_dir``, as a real prepared data set)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = tfds.download.DownloadConfig(
        num_shards=TFDS_SHARDS, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    TinyRows(data_dir=data_dir).download_and_prepare(download_config=config)
    assert tfds.builder("tiny_rows", data_dir=data_dir).info.splits["train"].num_shards == 3
    return data_dir


def _stored_rows(data_dir: str, split: str) -> np.ndarray:
    """Image number at each row of ``split`` as tfds reads it: files in order, one at a time
    (its default interleaves 16-record blocks of several files, not the row order)."""
    builder = tfds.builder("tiny_rows", data_dir=data_dir)
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    ds = builder.as_dataset(split, shuffle_files=False, read_config=read_config)
    return np.asarray([int(ex["image"][0, 0, 0]) for ex in tfds.as_numpy(ds)])


def _check_rows(batches: list[dict], stored: np.ndarray) -> None:
    for batch in batches:
        np.testing.assert_array_equal(_image_ids(batch["views"]), stored[batch["index"]])
        np.testing.assert_array_equal(batch["label"], stored[batch["index"]])


@pytest.mark.parametrize("split", ["train", "train[10:40]", "train[10%:50%]"])
def test_tfds_index_is_the_row_of_the_stored_image(tiny_rows, split):
    stored = _stored_rows(tiny_rows, split)  # [N]: 50, 30, 20
    assert sorted(_stored_rows(tiny_rows, "train")) == list(range(TFDS_ROWS))
    cfg = _cfg("tiny_rows", batch=4, data_dir=tiny_rows, train_split=split)
    steps = pipeline.steps_per_epoch(cfg)
    batches = _take(pipeline.pretrain_iterator(cfg, seed=0), 2 * steps)
    assert batches[0]["index"].dtype == np.int32
    _check_rows(batches, stored)  # both epochs: an image keeps its index
    for epoch in (batches[:steps], batches[steps:]):
        index = _indices(epoch)
        assert len(set(index.tolist())) == steps * 4
        assert 0 <= index.min() and index.max() < len(stored)
    resumed = _take(pipeline.pretrain_iterator(cfg, seed=0, start_step=steps - 1), 2)
    np.testing.assert_array_equal(_indices(resumed), _indices(batches[steps - 1 : steps + 1]))


def test_tfds_index_of_a_process_share_is_its_row_in_the_whole_split(tiny_rows):
    stored = _stored_rows(tiny_rows, "train")
    cfg = _cfg("tiny_rows", batch=8, data_dir=tiny_rows)  # 6 steps of 4 of 25 rows per process
    for p in range(2):
        iterator = pipeline.pretrain_iterator(cfg, seed=0, process_index=p, process_count=2)
        batches = _take(iterator, 6)
        _check_rows(batches, stored)
        index = set(_indices(batches).tolist())
        assert len(index) == 24 and index <= set(range(25 * p, 25 * p + 25))


def test_tfds_split_joined_with_plus_is_rejected(tiny_rows):
    cfg = _cfg("tiny_rows", batch=4, data_dir=tiny_rows, train_split="train[:10]+train[20:30]")
    with pytest.raises(ValueError, match=r"'train\[:10\]\+train\[20:30\]' joins 2 splits"):
        pipeline.pretrain_iterator(cfg, seed=0)
