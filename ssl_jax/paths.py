"""Workdir file access for local paths and object stores alike.

On a pod the workdir is a bucket (``gs://bucket/run``) that every host reaches; on a laptop
it is a folder. ``etils.epath`` (orbax's own path layer) opens both, through TensorFlow's
gfile for ``gs://``; everything the run writes besides checkpoints goes through here.
"""

from __future__ import annotations

import os
import pathlib

from etils import epath


def is_remote(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """A local path made absolute (orbax needs one); a URL unchanged."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def join(*parts: str) -> str:
    return str(epath.Path(parts[0]).joinpath(*parts[1:]))


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
    return [p.name for p in epath.Path(path).iterdir()]


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Writes a whole file; locally through a rename, so a crash leaves the old or the
    new content (object stores replace objects whole anyway)."""
    target = epath.Path(path)
    if is_remote(path):
        target.write_text(text)
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def append_text(path: str, text: str) -> None:
    with epath.Path(path).open("a") as f:
        f.write(text)


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def open_binary(path: str):
    """A file object reading ``path`` as a stream (large checkpoints stay on disk)."""
    return epath.Path(path).open("rb")


def write_bytes(path: str, data: bytes) -> None:
    epath.Path(path).write_bytes(data)


def workdir_problem(path: str) -> str | None:
    """Why ``path`` cannot be a run's directory (a file is there, or a name is longer than
    the file system allows), or None. Remote paths are left to their file system."""
    if is_remote(path):
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--workdir={path} is a file, not a directory; name a new or existing directory."
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for part in pathlib.PurePath(os.path.abspath(path)).parts:
        if len(part) > limit:
            return (
                f"--workdir={path[:60]}...: the name {part[:40]}... has {len(part)} characters, "
                f"more than the file system's {limit}."
            )
    return None


def probe_writable(directory: str, name: str) -> None:
    """Raises the OSError of a read-only or unreachable ``directory`` by writing and
    removing one empty file ``name`` in it."""
    probe = epath.Path(directory) / name
    probe.write_text("")
    probe.unlink()
