"""Image files: decoding to RGB, and listing and validating an image folder.

The ``folder:<path>`` data set (see sources.py) lists its files here once at load time:
class subfolders or a flat folder, hidden entries ignored, other files skipped with one
warning, and every image decoded once so that a broken file fails naming its path.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 RGB ``[H,W,3]`` (gray and RGBA become RGB)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    # .DS_Store, .ipynb_checkpoints/, macOS "._photo.jpg" resource forks: never data.
    return name.startswith(".")


def _warn_skipped(root: str, skipped: list[str]) -> None:
    """One warning for files without an image extension, naming a few of them."""
    if not skipped:
        return
    extensions = sorted({os.path.splitext(p)[1].lower() or "(none)" for p in skipped})
    logging.warning(
        "folder %r: skipped %d files without an image extension %s, e.g. %s (extensions: %s)",
        root,
        len(skipped),
        IMAGE_EXTENSIONS,
        ", ".join(repr(p) for p in skipped[:3]),
        ", ".join(extensions),
    )


def list_folder(root: str) -> tuple[list[str], list[int], int | None]:
    """Files and labels: class subfolders (recursive within each) or a flat folder."""
    entries = sorted(e for e in os.listdir(root) if not _is_hidden(e))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    top = [os.path.join(root, e) for e in entries if e not in classes]
    top_files = [p for p in top if is_image(p)]
    skipped = [p for p in top if not is_image(p)]
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))  # fixed order
            files = [os.path.join(dirpath, f) for f in sorted(filenames) if not _is_hidden(f)]
            paths += [f for f in files if is_image(f)]
            skipped += [f for f in files if not is_image(f)]
            labels += [label] * (len(paths) - len(labels))
    if paths and top_files:
        raise ValueError(
            f"folder {root!r} mixes class subfolders {classes} with loose images such as "
            f"{top_files[0]!r}; use either class subfolders or a flat folder"
        )
    if not paths and not top_files:
        raise ValueError(
            f"folder {root!r} contains no images with extensions {IMAGE_EXTENSIONS}"
            + (f"; it has other files such as {skipped[0]!r}" if skipped else "")
        )
    _warn_skipped(root, skipped)
    if paths:
        return paths, labels, len(classes)
    return top_files, [-1] * len(top_files), None


def _bmp_palette_problem(path: str) -> str | None:
    """Why TF would misread this BMP, or None.

    TF's BMP decoder ignores the colour table: an 8-bit palette BMP decodes as its palette
    *indices* (wrong colours, silently) and 1/4-bit BMPs fail with a cryptic channel error.
    An 8-bit BMP whose table is the gray ramp (PIL's mode "L") decodes correctly.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        header = f.read(14 + 40 + 256 * 4)
    if len(header) < 30 or header[:2] != b"BM":
        return None  # not a BMP after all; the decoder reports it
    dib_size = int.from_bytes(header[14:18], "little")
    bits = int.from_bytes(header[28:30] if dib_size >= 40 else header[24:26], "little")
    if bits > 8:
        return None
    if bits == 8 and dib_size >= 40:
        used = int.from_bytes(header[46:50], "little") or 256
        table = np.frombuffer(header[14 + dib_size :][: used * 4], np.uint8).reshape(-1, 4)
        ramp = np.arange(len(table), dtype=np.uint8)
        if len(table) == used and all((table[:, c] == ramp).all() for c in range(3)):
            return None
    return (
        f"palette BMP with {bits}-bit pixels, which TensorFlow's decoder cannot read; "
        "convert it to PNG or 24-bit BMP (e.g. PIL: Image.open(p).convert('RGB').save(...))"
    )


def check_decodable(paths: list[str]) -> None:
    """Decodes every file once with the pipeline's own decoder; fails naming the file."""
    for path in paths:
        # Before decoding: TF's error for a 1/4-bit BMP says nothing about palettes.
        problem = _bmp_palette_problem(path) if path.lower().endswith(".bmp") else None
        if problem:
            raise ValueError(f"cannot decode image file {path!r}: {problem}")
        try:
            decode_image(tf.io.read_file(path))
        except (tf.errors.OpError, ValueError) as e:
            message = getattr(e, "message", str(e)).strip().splitlines()[0]
            message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message)  # TF op noise
            raise ValueError(f"cannot decode image file {path!r}: {message}") from None
