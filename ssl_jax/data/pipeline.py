"""tf.data input pipelines: pre-training views, as NumPy.

Pre-training (``pretrain_iterator``) is deterministic for a seed and resumable exactly:

* Random-access sources (digits, npz, folder): epoch ``e``'s global order is a seeded
  permutation of all indices (``tf.random.experimental.index_shuffle``, O(1) per index, no
  array of N indices per epoch). Global batch ``t`` of the epoch is ``order[t*B:(t+1)*B]``;
  process ``p`` takes the contiguous slice ``p`` of it, so the global batch does not depend on
  the process count. Resuming at step ``s`` simply starts the step counter at ``s``: nothing
  before it is read, decoded or augmented.
* Streaming tfds sources: each process reads its own even share of the split
  (``tfds.split_for_jax_process``), shuffles files and a buffer with a per-epoch seed, and a
  resume skips the first ``offset * local_batch`` still-encoded records of its epoch. Here the
  global batch does depend on the process count (each process shuffles only its share).

Augmentation randomness is keyed by the *global sample number* ``g = step * B + row`` (row in
the global batch), folded into the seed, so it is a pure function of (seed, epoch, position)
and identical however many processes share the batch. Each view (crop) ``v`` of an example
then folds in its index among the naturally sorted view names (``views.py``).

Batches are ``{'views' [b,V,S,S,3], 'label' [b], 'index' [b]}``, or with multi-crop (DINO's
global and local crops, told apart by each view's ``size``) ``{'global_views' [b,G,S,S,3],
'local_views' [b,L,s,s,3], 'label', 'index'}``; every leaf has the batch on its leading axis,
as ``parallel.to_global`` expects. ``index`` (int32) is the example's row in
``input.train_split``, 0..N-1: the same image has the same index in every epoch, after a
resume and for any process count (for tfds it comes from the tfds id, see ``sources.py``).
With ``input.augment_on_device`` the views are uint8 crops, not yet colour-augmented or
normalised (``device_augment.py``).

``steps_per_epoch`` drops the remainder (``N // B``), the same on every process. Every process
of a tfds source holds at least ``floor(N / P) >= steps * B / P`` examples, so all processes
run the same number of steps, as SPMD needs.

Evaluation batches are ``data/eval_pipeline.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ssl_jax.data import device_augment
from ssl_jax.data import views as views_lib
from ssl_jax.data.sources import Source, hide_accelerators_from_tf, load_source

hide_accelerators_from_tf()

Batch = dict[str, np.ndarray]
_AUTOTUNE = tf.data.AUTOTUNE
# Purpose tags folded into the user seed so the shuffle and the augmentations never share
# random streams.
_SHUFFLE_TAG = 0
_AUGMENT_TAG = 1


# ----------------------------------------------------------------------------- sizes


def source_of(input_cfg: Any, split: str) -> Source:
    return load_source(input_cfg.dataset, split, input_cfg.get("data_dir"))


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """``global_batch_size // process_count``, or fails naming both numbers."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    return global_batch_size // process_count


def steps_per_epoch(input_cfg: Any, process_count: int = 1) -> int:
    """Full global batches per epoch of ``input.train_split`` (remainder dropped)."""
    source = source_of(input_cfg, input_cfg.train_split)
    batch = input_cfg.global_batch_size
    local_batch_size(batch, process_count)
    if source.num_examples < batch:
        raise ValueError(
            f"data set {source.name!r} split {source.split!r} has {source.num_examples} "
            f"examples, fewer than one global batch of {batch}; lower "
            "input.global_batch_size or use more data"
        )
    return source.num_examples // batch


# ----------------------------------------------------------------------------- helpers


def _seed_pair(seed: int, tag: int) -> tf.Tensor:
    return tf.constant([seed % 2**63, tag], tf.int64)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A Python int seed for tfds/tf.data shuffles of one epoch (SeedSequence is stable)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1)[0])


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Parallelism comes from the parallel map; one op thread each avoids oversubscription.
    options.threading.max_intra_op_parallelism = 1
    return options


def batched(
    ds: tf.data.Dataset, local_batch: int, input_cfg: Any, per_batch: Callable | None = None
) -> tf.data.Dataset:
    ds = ds.batch(local_batch, drop_remainder=True)
    if per_batch is not None:
        ds = ds.map(per_batch)
    ds = ds.prefetch(input_cfg.get("prefetch", _AUTOTUNE))
    return ds.with_options(_options())


def _finish(
    ds: tf.data.Dataset, local_batch: int, input_cfg: Any, per_batch: Callable | None = None
) -> Iterator[Batch]:
    return batched(ds, local_batch, input_cfg, per_batch).as_numpy_iterator()


def _make_example_fn(input_cfg: Any, seed: int):
    """``(image, label, g) -> {'views' | 'global_views', 'local_views', 'label'}``.

    ``g`` is the global sample number; the view keys are those of ``views.make_crops``.
    """
    views_cfg = input_cfg.views
    views_lib.check_views_config(views_cfg, input_cfg.image_size)
    # On device: crop and flip here, colours and normalisation in the step (uint8 views).
    on_device = device_augment.check_config(input_cfg)
    augment_key = _seed_pair(seed, _AUGMENT_TAG)

    def example(image: tf.Tensor, label: tf.Tensor, g: tf.Tensor) -> dict[str, tf.Tensor]:
        example_seed = tf.random.experimental.stateless_fold_in(augment_key, g)
        crops = views_lib.make_crops(
            image,
            example_seed,
            views_cfg,
            image_size=input_cfg.image_size,
            mean=input_cfg.mean,
            std=input_cfg.std,
            photometric=not on_device,
        )
        return {**crops, "label": tf.cast(label, tf.int32)}

    # A tf.function is traced once per image signature and then reused by every per-epoch
    # pipeline of a streaming source instead of re-tracing the augmentation graph. No
    # autograph: the augmentations branch on tensors only through tf.cond / switch_case, and
    # re-parsing their Python source dominated the build time of a multi-crop pipeline.
    return tf.function(example, autograph=False)


# ----------------------------------------------------------------------------- pretrain


def _random_access_pretrain(
    source: Source,
    input_cfg: Any,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    steps: int,
) -> tf.data.Dataset:
    n = source.num_examples
    batch = input_cfg.global_batch_size
    local = local_batch_size(batch, process_count)
    row0 = process_index * local  # this process's first row of every global batch
    shuffle_key = _seed_pair(seed, _SHUFFLE_TAG)
    example = _make_example_fn(input_cfg, seed)

    def step_rows(t: tf.Tensor):
        rows = row0 + tf.range(local, dtype=tf.int64)  # [local]
        epoch_key = tf.random.experimental.stateless_fold_in(shuffle_key, t // steps)
        position = (t % steps) * batch + rows  # position in the epoch's order
        index = tf.random.experimental.index_shuffle(
            position, tf.cast(epoch_key, tf.int64), tf.constant(n - 1, tf.int64)
        )
        return index, t * batch + rows  # [local], [local]

    def load(index: tf.Tensor, g: tf.Tensor):
        ex = source.get(index)
        return {**example(ex["image"], ex["label"], g), "index": tf.cast(index, tf.int32)}

    ds = tf.data.Dataset.counter(start=start_step, dtype=tf.int64).map(step_rows).unbatch()
    return ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)


def _stream_pretrain(
    source: Source,
    input_cfg: Any,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    steps: int,
) -> Iterator[Batch]:
    batch = input_cfg.global_batch_size
    local = local_batch_size(batch, process_count)
    row0 = process_index * local
    example = _make_example_fn(input_cfg, seed)

    def number(b: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # The ids of a whole batch in one op each: per example, in the serial read stage,
        # the string ops slowed the input visibly.
        rest = {k: v for k, v in b.items() if k != "tfds_id"}
        return {**rest, "index": source.rows(b["tfds_id"])}  # [local] int32

    epoch, offset = divmod(start_step, steps)
    while True:
        epoch_seed = _epoch_seed(seed, epoch)
        ds = source.stream(
            shuffle_seed=epoch_seed,
            process_index=process_index,
            process_count=process_count,
            with_ids=True,
        )
        ds = ds.shuffle(input_cfg.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        # Equal steps on every process; skip before decoding so a resume is cheap.
        ds = ds.take(steps * local).skip(offset * local).enumerate(start=offset * local)
        first_step = epoch * steps

        def load(j: tf.Tensor, ex: dict[str, tf.Tensor], first_step: int = first_step):
            g = (first_step + j // local) * batch + row0 + j % local
            views = example(source.decode(ex)["image"], ex["label"], g)
            return {**views, "tfds_id": ex["tfds_id"]}

        ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
        yield from _finish(ds, local, input_cfg, per_batch=number)
        epoch, offset = epoch + 1, 0


def batch_spec(input_cfg: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (global shape, dtype)}`` of the batches ``pretrain_iterator`` yields, summed
    over the processes: ``views`` or ``global_views`` + ``local_views`` (float32, or uint8
    with ``input.augment_on_device``), ``label`` and ``index``. For synthetic batches of the
    right structure (benchmarks, tests) without reading any data."""
    b, size = input_cfg.global_batch_size, input_cfg.image_size
    dtype = "uint8" if device_augment.check_config(input_cfg) else "float32"
    global_names, local_names = views_lib.split_global_local(input_cfg.views, size)
    spec = {"label": ((b,), "int32"), "index": ((b,), "int32")}
    if not local_names:
        spec["views"] = ((b, len(global_names), size, size, 3), dtype)
        return spec
    small = views_lib.view_size(input_cfg.views[local_names[0]], size)
    spec["global_views"] = ((b, len(global_names), size, size, 3), dtype)
    spec["local_views"] = ((b, len(local_names), small, small, 3), dtype)
    return spec


def synthetic_batch(input_cfg: Any, seed: int = 0) -> Batch:
    """Host arrays of ``batch_spec``: N(0, 1) views (normalised pixels) or random uint8,
    zero labels, indices ``0..B-1``."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, dtype) in batch_spec(input_cfg).items():
        if key == "index":
            out[key] = np.arange(shape[0], dtype=dtype)
        elif dtype == "float32":
            out[key] = rng.standard_normal(shape, np.float32)
        elif dtype == "uint8":
            out[key] = rng.integers(0, 256, shape, np.uint8)
        else:
            out[key] = np.zeros(shape, dtype)
    return out


def pretrain_iterator(
    input_cfg: Any,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Yields ``{'views': f32 [b, V, S, S, 3], 'label': i32 [b], 'index': i32 [b]}`` forever,
    b = B // P; ``index`` is each example's row in ``input.train_split`` (module doc).

    With multi-crop (views whose ``size`` differs from ``input.image_size``, see
    ``views.py``) the batch is ``{'global_views': f32 [b, G, S, S, 3], 'local_views': f32
    [b, L, s, s, 3], 'label': i32 [b], 'index': i32 [b]}`` instead.

    With ``input.augment_on_device`` the view arrays are uint8 0..255, only cropped and
    flipped (``device_augment.py`` does the rest inside the train step).

    Batch ``k`` of the iterator is global step ``start_step + k``; an iterator started at
    ``start_step=s`` yields bitwise the batches an uninterrupted one yields from step s on.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    steps = steps_per_epoch(input_cfg, process_count)
    source = source_of(input_cfg, input_cfg.train_split)
    local = local_batch_size(input_cfg.global_batch_size, process_count)
    if not source.random_access:
        # A split tfds ids cannot number ('a+b') fails here, not at the first batch.
        _ = source.row_layout
        return _stream_pretrain(
            source, input_cfg, seed, start_step, process_index, process_count, steps
        )
    ds = _random_access_pretrain(
        source, input_cfg, seed, start_step, process_index, process_count, steps
    )
    return _finish(ds, local, input_cfg)


# ----------------------------------------------------------------------------- eval
