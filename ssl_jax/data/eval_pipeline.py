"""Evaluation batches: every example of a split exactly once, in a fixed order, as NumPy.

The last batch is zero-padded with ``mask=False``, and every process yields the same
number of batches (each its own rows of every global batch), as SPMD needs. Pipelines
are cached: the kNN monitor and the final report read the same splits again and again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from ssl_jax.data import augment as aug
from ssl_jax.data.pipeline import Batch, batched, local_batch_size, source_of
from ssl_jax.data.sources import Source


def num_eval_examples(input_cfg: Any, split: str) -> int:
    """Number of (real, unpadded) examples ``eval_iterator`` yields over all processes."""
    return source_of(input_cfg, split).num_examples


def eval_num_batches(
    input_cfg: Any, split: str, *, global_batch_size: int, process_count: int = 1
) -> int:
    """Batches ``eval_iterator`` yields on each process (equal on all processes)."""
    source = source_of(input_cfg, split)
    local = local_batch_size(global_batch_size, process_count)
    if source.random_access:
        return math.ceil(source.num_examples / global_batch_size)
    # Streaming: each process has its own share; pad everyone to the largest share.
    shares = [source.process_num_examples(q, process_count) for q in range(process_count)]
    return max(math.ceil(n / local) for n in shares)


# Evaluations read the same splits again and again (each kNN monitor, both encoders of the
# final report), and tracing a tf.data pipeline's functions takes about 0.5 s, so each eval
# pipeline is built once. The key holds the source's id and the cache the source itself,
# so a reloaded source (load_source.cache_clear) gets a new pipeline.
_EVAL_DATASETS: dict[tuple, tuple[Source, tf.data.Dataset]] = {}
_EVAL_DATASETS_KEPT = 8


def eval_iterator(
    input_cfg: Any,
    split: str,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Yields ``{'image': f32 [b,S,S,3], 'label': i32 [b], 'mask': bool [b]}``, b = B // P.

    Every example of ``split`` once, in a fixed order; padding rows are all zeros with
    ``mask=False``; every process yields ``eval_num_batches(...)`` batches.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    source = source_of(input_cfg, split)
    key = (id(source), input_cfg.to_json(sort_keys=True), split, global_batch_size)
    key += (process_index, process_count)
    if key not in _EVAL_DATASETS:
        if len(_EVAL_DATASETS) >= _EVAL_DATASETS_KEPT:
            del _EVAL_DATASETS[next(iter(_EVAL_DATASETS))]  # the oldest
        _EVAL_DATASETS[key] = (
            source,
            _eval_dataset(
                source, input_cfg, split, global_batch_size, process_index, process_count
            ),
        )
    return _EVAL_DATASETS[key][1].as_numpy_iterator()


def _eval_dataset(
    source: Source,
    input_cfg: Any,
    split: str,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
    local = local_batch_size(global_batch_size, process_count)
    num_batches = eval_num_batches(
        input_cfg, split, global_batch_size=global_batch_size, process_count=process_count
    )
    size = input_cfg.image_size
    padding = {
        "image": tf.zeros([size, size, 3], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }

    def preprocess(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = aug.eval_preprocess(ex["image"], size, input_cfg.eval_crop_fraction)
        image = aug.normalize(image, input_cfg.mean, input_cfg.std)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True)}

    if source.random_access:
        n = source.num_examples
        row0 = process_index * local

        def batch_positions(b: tf.Tensor) -> tf.Tensor:
            return b * global_batch_size + row0 + tf.range(local, dtype=tf.int64)

        def load(position: tf.Tensor) -> dict[str, tf.Tensor]:
            return tf.cond(position < n, lambda: preprocess(source.get(position)), lambda: padding)

        ds = tf.data.Dataset.range(num_batches).map(batch_positions).unbatch()
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        n_local = source.process_num_examples(process_index, process_count)
        ds = source.stream(
            shuffle_seed=None, process_index=process_index, process_count=process_count
        )
        ds = ds.take(n_local).map(
            lambda ex: preprocess(source.decode(ex)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.concatenate(
            tf.data.Dataset.from_tensors(padding).repeat(num_batches * local - n_local)
        )
    return batched(ds, local, input_cfg)
