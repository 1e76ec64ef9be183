"""A prepared TensorFlow Datasets builder as a streaming `Source` (``sources.py``).

Examples stream from the builder's files with the images still encoded (``decode`` decodes
them), each process reading its own even share of the split; ``rows`` numbers every
example by its row in the split from tfds's per-example id. Never downloads: the data set
is prepared once with ``tfds build`` into ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import tensorflow as tf

from ssl_jax.data import LOCAL_KINDS, image_files
from ssl_jax.data.sources import Source

# The end of a tfds shard file name, '...-00003-of-00016', and a tfds id: shard file 3's
# record 123 is '...-00003-of-00016__123'.
_SHARD_RE = r"-(\d+)-of-(\d+)$"
_TFDS_ID_RE = r"^.*-(\d+)-of-\d+__(\d+)$"


def _numbered_shards(info) -> bool:
    """Whether file ``k`` of a tfds ``SplitInfo`` is named ``...-k-of-K`` (tfds's default
    template), so the file number in a tfds id is the position of its shard."""
    try:
        filenames = info.filenames
    except ValueError:  # a split spread over several folders has no one file template
        return False
    shards = [re.search(_SHARD_RE, name) for name in filenames]
    return len(shards) == info.num_shards and all(
        m is not None and (int(m[1]), int(m[2])) == (k, info.num_shards)
        for k, m in enumerate(shards)
    )


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource(Source):
    """A prepared tfds builder; examples stream from its files, images still encoded."""

    data_dir: str | None = None

    @functools.cached_property
    def builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder(self.name, data_dir=self.data_dir)

    def process_split(self, process_index: int, process_count: int):
        """This process's even share of the split (tfds ReadInstruction-like)."""
        import tensorflow_datasets as tfds

        return tfds.split_for_jax_process(
            self.split, process_index=process_index, process_count=process_count
        )

    def process_num_examples(self, process_index: int, process_count: int) -> int:
        split = self.process_split(process_index, process_count)
        return int(self.builder.info.splits[split].num_examples)

    @functools.cached_property
    def row_layout(self) -> tuple[int, np.ndarray]:
        """``(start, shard_starts)``: record ``r`` of shard file ``k`` of the named split is
        row ``shard_starts[k] + r - start`` of ``self.split`` (``shard_starts`` int64 [K]).

        ``start`` is the first row of the slice as tfds resolves ``self.split``. Rows count
        the shard files one after another, as tfds slices (``train[10:40]``); a plain
        ``as_dataset`` interleaves blocks of several files, so its k-th example is not row k.
        Fails, naming the split, for ``a+b`` splits and shard files not named ``-SSSSS-of-NNNNN``.
        """
        import tensorflow_datasets as tfds

        splits = self.builder.info.splits
        absolute = tfds.core.ReadInstruction.from_spec(self.split).to_absolute(splits)
        if len(absolute) != 1:
            raise ValueError(
                f"tfds split {self.split!r} joins {len(absolute)} splits with '+'; "
                "pre-training numbers the examples of one (sliced) split, e.g. 'train[:90%]'"
            )
        (instruction,) = absolute
        info = splits[instruction.splitname]
        if not _numbered_shards(info):
            raise ValueError(
                f"tfds split {self.split!r} of {self.name!r}: cannot number its examples; its "
                "shard files are not named '...-SSSSS-of-NNNNN' (file k = shard k) in one folder"
            )
        shard_starts = np.cumsum([0, *info.shard_lengths[:-1]], dtype=np.int64)
        return instruction.from_ or 0, shard_starts

    def rows(self, tfds_ids: tf.Tensor) -> tf.Tensor:
        """The rows in ``self.split`` (int32 ``[...]``) of the examples with these tfds ids
        (string ``[...]``, as ``stream(with_ids=True)`` gives them).

        Elementwise string ops: call it on a batch of ids, one op per batch, not per example.
        """
        start, shard_starts = self.row_layout

        def number(group: str) -> tf.Tensor:  # [...] int64
            return tf.strings.to_number(
                tf.strings.regex_replace(tfds_ids, _TFDS_ID_RE, group), tf.int64
            )

        rows = tf.gather(tf.constant(shard_starts), number(r"\1")) + number(r"\2") - start
        # A numbering that is off would otherwise pass silently; this costs two compares.
        in_split = tf.reduce_all((rows >= 0) & (rows < self.num_examples))
        check = tf.debugging.Assert(
            in_split, [f"a tfds id outside split {self.split!r}:", tfds_ids], summarize=4
        )
        with tf.control_dependencies([check]):
            return tf.cast(rows, tf.int32)

    def stream(
        self,
        *,
        shuffle_seed: int | None,
        process_index: int = 0,
        process_count: int = 1,
        with_ids: bool = False,
    ) -> tf.data.Dataset:
        """Encoded examples ``{'image': bytes, 'label'}`` of this process's share, once.

        With ``shuffle_seed`` the file order is shuffled deterministically by that seed;
        with ``None`` the order is the stored order (for evaluation). ``with_ids`` adds
        ``'tfds_id'`` (string), which ``rows`` turns into the example's row in the split.
        """
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed, try_autocache=False, add_tfds_id=with_ids
        )
        ds = self.builder.as_dataset(
            split=self.process_split(process_index, process_count),
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        has_label = "label" in self.builder.info.features.keys()

        def select(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            out = {
                "image": ex["image"],
                "label": tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1),
            }
            if with_ids:
                out["tfds_id"] = ex["tfds_id"]
            return out

        return ds.map(select)

    def decode(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**example, "image": image_files.decode_image(example["image"])}


# ----------------------------------------------------------------------------- loaders


def load_tfds(name: str, split: str, data_dir: str | None) -> TfdsSource:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown data set {name!r}; valid: {LOCAL_KINDS}, or a tfds name such as "
            f"'cifar10' or 'imagenet2012' ({name!r} is not a tfds data set either; see "
            "tfds.list_builders())"
        ) from None
    if not builder.info.splits:
        raise ValueError(
            f"tfds data set {name!r} is not prepared in data_dir={data_dir!r} (looked in "
            f"{builder.data_dir}); ssl_jax never downloads at run time: run "
            f"`tfds build {name} --data_dir=...` once"
        )
    try:
        num_examples = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(
            f"bad split {split!r} for tfds data set {name!r}; splits: "
            f"{sorted(builder.info.splits)} ({e})"
        ) from None
    features = builder.info.features
    label = features["label"] if "label" in features.keys() else None
    num_classes = getattr(label, "num_classes", None)  # ClassLabel only
    source = TfdsSource(name, split, num_examples, num_classes, data_dir)
    source.__dict__["builder"] = builder  # reuse this builder instead of making another
    return source
