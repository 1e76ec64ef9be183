"""Data sources: where the raw, un-augmented examples come from.

``load_source(dataset, split, data_dir)`` understands four kinds of ``input.dataset``:

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1797 images, offline). Gray
  values 0..16 are scaled to uint8 0..255 and tiled to RGB. Splits: ``train`` is the first
  1437 examples, ``test`` the remaining 360 (sklearn's order, so every run agrees).
* ``colour_digits`` -- the same digits with each image's strokes in a colour of its own (a
  hue drawn once per example from a fixed seed, all at one CIE lightness and chroma, on
  black), so that the colour channels carry the digit's shape and the lightness does not
  carry the hue: the offline demo of methods whose views are colour channels (CMC's L
  and ab; on the gray ``digits`` the ab view is empty).
* ``npz:<path>`` -- a NumPy ``.npz`` with ``images`` (uint8 ``[N,H,W,3]``, or gray ``[N,H,W]``
  / ``[N,H,W,1]``) and optional integer ``labels [N]``. One array set: split ``train``.
* ``folder:<path>`` -- image files (jpg/jpeg/png/bmp/gif) either in class subfolders (label =
  index of the sorted subfolder name, like torchvision's ImageFolder) or flat (unlabelled,
  label -1). Split ``train``. Any mode (gray, gray+alpha, RGBA, palette, 16-bit, CMYK JPEG)
  and any size: the pipeline sees uint8 RGB and crops/resizes to ``input.image_size``.
  Hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``, macOS ``._x.jpg``) are ignored;
  other files without an image extension (``notes.txt``) are skipped with one logged
  warning that names some, so a folder of ``.webp`` or ``.tif`` images is not silently
  dropped. Every image file is decoded once at load time so that a broken one fails here,
  naming its path, instead of deep inside a tf.data iterator.
* any other name -- a TensorFlow Datasets builder read from ``data_dir`` (never downloaded at
  run time; prepare it once with ``tfds build``).

Array and folder sources allow tfds-style slicing of their split: ``train[:100]``,
``train[100:]``, ``train[10%:50%]``.

Array and folder sources are *random access* (``Source.get(index)``), so the pipeline can
shuffle by permuting indices and skip for resume by skipping indices. tfds sources are
*streaming* (``Source.stream(...)`` yields still-encoded images, ``Source.decode`` decodes),
so skipping for resume never decodes the skipped images.

Every example has a row in its split, 0..N-1 (``Source.num_examples``), the ``index`` of
pre-training batches. For array and folder sources it is the position in the sliced arrays.
A tfds stream numbers its examples from tfds's per-example id (``ReadConfig(add_tfds_id=True)``,
``'<name>-<split>.tfrecord-00003-of-00016__123'``: record 123 of shard file 3): the row in
the named split is the length of the shards before that file plus the record, less the start
of the slice (``train[10%:]``) as tfds itself resolves it (``TfdsSource.row_layout``).

The tfds source lives in ``tfds_source.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import ClassVar

import numpy as np
import tensorflow as tf

from ssl_jax.data import LOCAL_KINDS, image_files


def hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow (used only for tf.data) off the GPUs that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF already initialised its devices (someone else used it first); nothing to do.
        pass


hide_accelerators_from_tf()

DIGITS_TRAIN_SIZE = 1437  # sklearn's 1797 digits: first 1437 train, last 360 test (80/20).
COLOUR_DIGITS_SEED = 0xC010

_SPLIT_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\[(?P<lo>[^:\]]*):(?P<hi>[^\]]*)\])?$")


# ----------------------------------------------------------------------------- splits


def _slice_bound(text: str, n: int, split: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        if text.endswith("%"):
            # tfds rounds percent boundaries to the closest example.
            return int(np.floor(n * float(text[:-1]) / 100 + 0.5))
        return int(text)
    except ValueError:
        raise ValueError(f"bad slice bound {text!r} in split {split!r}") from None


def parse_split(split: str, sizes: dict[str, int]) -> tuple[int, int]:
    """Resolves ``name[lo:hi]`` against named split sizes; returns ``(start, stop)`` rows.

    ``sizes`` maps each split name to its number of rows; the returned range is relative to
    the concatenation of the splits in ``sizes`` order (so ``test`` of digits starts at 1437).
    """
    match = _SPLIT_RE.match(split.strip())
    if match is None or match["name"] not in sizes:
        raise ValueError(
            f"unknown split {split!r}; valid: {', '.join(sizes)} with optional slicing such "
            "as [:100], [100:], [10%:50%]"
        )
    offset = 0
    for name, size in sizes.items():
        if name == match["name"]:
            break
        offset += size
    n = sizes[match["name"]]
    lo = hi = None
    if match["lo"] is not None:
        lo = _slice_bound(match["lo"], n, split)
        hi = _slice_bound(match["hi"], n, split)
    start, stop, _ = slice(lo, hi).indices(n)
    if stop <= start:
        raise ValueError(f"split {split!r} selects no examples (rows {start}:{stop} of {n})")
    return offset + start, offset + stop


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """Common description of a data source; subclasses add ``get`` or ``stream``."""

    name: str
    split: str
    num_examples: int
    num_classes: int | None
    random_access: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource(Source):
    """In-memory uint8 images ``[N,H,W,3]`` and int32 labels ``[N]`` (-1 = unlabelled)."""

    random_access: ClassVar[bool] = True

    images: np.ndarray = dataclasses.field(repr=False, default=None)
    labels: np.ndarray = dataclasses.field(repr=False, default=None)

    @functools.cached_property
    def _tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        # Converted once, eagerly (init_scope lifts out of the tf.data trace that first asks),
        # and captured by every pipeline instead of being embedded in each graph.
        with tf.init_scope():
            return tf.convert_to_tensor(self.images), tf.convert_to_tensor(self.labels)

    def get(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """The example at ``index`` (a scalar int tensor): ``{'image', 'label'}``."""
        images, labels = self._tensors
        return {"image": tf.gather(images, index), "label": tf.gather(labels, index)}


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource(Source):
    """Image files decoded in tf.data; ``paths[i]`` has label ``labels[i]``."""

    random_access: ClassVar[bool] = True

    paths: tuple[str, ...] = dataclasses.field(repr=False, default=())
    labels: np.ndarray = dataclasses.field(repr=False, default=None)

    def get(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Reads and decodes the file at ``index`` into uint8 RGB ``[H,W,3]``."""
        path = tf.gather(tf.constant(self.paths), index)
        return {
            "image": image_files.decode_image(tf.io.read_file(path)),
            "label": tf.gather(tf.constant(self.labels), index),
        }


def _to_rgb_uint8(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{what}: images must be [N,H,W,3], [N,H,W,1] or [N,H,W]; got shape {images.shape}"
        )
    return np.ascontiguousarray(images)


def _num_classes(labels: np.ndarray) -> int | None:
    return int(labels.max()) + 1 if labels.size and labels.max() >= 0 else None


def _load_digits(split: str, colour: bool = False) -> ArraySource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = digits.images / 16.0  # [1797, 8, 8] in [0, 1]
    if colour:
        tint = _isoluminant_colours(len(gray), np.random.default_rng(COLOUR_DIGITS_SEED))
        images = np.round(gray[..., None] * tint[:, None, None, :] * 255.0).astype(np.uint8)
    else:
        images = _to_rgb_uint8(np.round(gray * 255.0).astype(np.uint8), "digits")
    labels = digits.target.astype(np.int32)
    sizes = {"train": DIGITS_TRAIN_SIZE, "test": len(images) - DIGITS_TRAIN_SIZE}
    start, stop = parse_split(split, sizes)
    name = "colour_digits" if colour else "digits"
    return ArraySource(name, split, stop - start, 10, images[start:stop], labels[start:stop])


def _isoluminant_colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3]`` sRGB colours in [0, 1] of uniform random hue at one CIE lightness and
    chroma (L* 65, C* 45): a digit's hue then shows in its ab channels but not in L, so
    the two views share the digit's shape, not its colour."""
    hue = rng.uniform(0.0, 2.0 * np.pi, n)
    lab = np.stack([np.full(n, 65.0), 45.0 * np.cos(hue), 45.0 * np.sin(hue)], axis=1)
    fy = (lab[:, 0] + 16.0) / 116.0
    f = np.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], axis=1)
    xyz = np.where(f > 6.0 / 29.0, f**3, (f - 16.0 / 116.0) / 7.787)
    xyz *= np.array([0.95047, 1.0, 1.08883])  # D65
    rgb_from_xyz = np.linalg.inv(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ]  # fmt: skip
    )
    linear = np.clip(xyz @ rgb_from_xyz.T, 0.0, 1.0)
    return np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``; anything np.load cannot read fails naming the file."""
    with open(path, "rb") as f:
        magic = f.read(6)
    # A zip starts with a file header, or with its end record if it holds nothing.
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06") and magic != b"\x93NUMPY":
        # np.load would try unpickling it and then blame "pickled (object) data".
        raise ValueError(
            f"cannot read npz data set file {path!r}: not an .npz archive (it does not "
            "start like a zip file); write it with np.savez(path, images=..., labels=...)"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # not a zip / not NumPy / object arrays
        raise ValueError(f"cannot read npz data set file {path!r}: {e}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: expected an .npz archive (np.savez(path, images=..., labels=...)); "
            f"found a single {type(data).__name__} array"
        )
    with data:
        try:
            return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as e:  # zip member corrupt, or pickled
            raise ValueError(f"cannot read npz data set file {path!r}: {e}") from None


def _load_npz(path: str, split: str) -> ArraySource:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz data set file {path!r} does not exist")
    data = _read_npz(path)
    keys = sorted(data)
    if "images" not in keys:
        raise ValueError(
            f"{path}: expected key 'images' (uint8 [N,H,W,3]) and optional 'labels'; "
            f"found keys {keys}"
        )
    images = data["images"]
    labels = data.get("labels")
    if images.dtype != np.uint8:
        hint = (
            "; scale floats in 0..1 with (x * 255).round().astype(np.uint8)"
            if np.issubdtype(images.dtype, np.floating)
            else ""
        )
        raise ValueError(
            f"{path}: 'images' must have dtype uint8 (0..255); found {images.dtype}{hint}"
        )
    images = _to_rgb_uint8(images, path)
    if labels is None:
        labels = np.full([len(images)], -1, np.int32)
    elif not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
        raise ValueError(
            f"{path}: 'labels' must be integers of shape [{len(images)}]; "
            f"found dtype {labels.dtype} shape {labels.shape}"
        )
    start, stop = parse_split(split, {"train": len(images)})
    labels = labels.astype(np.int32)
    return ArraySource(
        f"npz:{path}",
        split,
        stop - start,
        _num_classes(labels),
        images[start:stop],
        labels[start:stop],
    )


def _load_folder(root: str, split: str) -> FolderSource:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    paths, labels, num_classes = image_files.list_folder(root)
    start, stop = parse_split(split, {"train": len(paths)})
    paths, labels = paths[start:stop], labels[start:stop]
    image_files.check_decodable(paths)
    return FolderSource(
        f"folder:{root}", split, len(paths), num_classes, tuple(paths), np.asarray(labels, np.int32)
    )


@functools.lru_cache(maxsize=16)
def load_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
    """The source named by ``input.dataset`` restricted to ``split`` (see module doc).

    Cached: the train loop, the eval loop and ``steps_per_epoch`` share one loaded source
    (folders are validated once, arrays held once).
    """
    if dataset in ("digits", "colour_digits"):
        return _load_digits(split, colour=dataset == "colour_digits")
    if dataset.startswith("npz:"):
        return _load_npz(dataset[len("npz:") :], split)
    if dataset.startswith("folder:"):
        return _load_folder(dataset[len("folder:") :], split)
    if not re.fullmatch(r"[a-z0-9_]+(/[A-Za-z0-9_.\-]+)*(:[0-9.]+)?", dataset):
        raise ValueError(
            f"unknown data set {dataset!r}; valid: {LOCAL_KINDS}, or a tfds name "
            "(e.g. 'cifar10', 'imagenet2012')"
        )
    from ssl_jax.data.tfds_source import load_tfds  # imports this module: imported here

    return load_tfds(dataset, split, data_dir)
