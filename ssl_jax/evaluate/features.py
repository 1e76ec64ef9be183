"""Frozen-feature extraction over a labelled split, for the kNN monitor and linear probes.

Each process feeds its own slice of every batch; the slices are assembled into one global
array sharded over the ``('data',)`` mesh, embedded by the caller's jitted function, and
brought back to host on every process, so all processes end with the same features in
the same (global batch) order. The last batch of a split is padded to a full batch by the
input pipeline; its padding rows carry ``mask == False`` and are dropped here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_jax import parallel

EmbedFn = Callable[[jax.Array], jax.Array]


def _check_local_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> None:
    """Fails early (naming the sizes) on batches that cannot be sharded over the mesh."""
    missing = {"image", "label", "mask"} - set(batch)
    if missing:
        raise KeyError(f"feature batches need keys image/label/mask; missing {sorted(missing)}")
    local_b = len(batch["image"])
    local_devices = mesh.local_mesh.devices.size
    if local_b % local_devices:
        raise ValueError(
            f"local eval batch of {local_b} examples is not divisible by the "
            f"{local_devices} local devices; pad the last batch (mask=False) to a multiple."
        )
    if len(batch["label"]) != local_b or len(batch["mask"]) != local_b:
        raise ValueError(
            f"image/label/mask lengths differ: {local_b}, {len(batch['label'])}, "
            f"{len(batch['mask'])}"
        )


def _to_host(feats: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[np.ndarray, ...]:
    feats, labels, mask = parallel.fetch((feats, labels, mask))
    keep = np.asarray(mask, dtype=bool)
    return np.asarray(feats, np.float32)[keep], np.asarray(labels, np.int32)[keep]


def extract_features(
    embed_fn: EmbedFn,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
    poll: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeds every real example of ``batches``; returns features [N, D] and labels [N].

    ``embed_fn(images [B, H, W, C]) -> [B, D]`` should be jitted (the caller closes over the
    frozen params). Features are returned as float32 even if the model computes in bfloat16.
    ``poll()`` runs after each batch; it may raise to stop (a preemption notice).
    """
    feats_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    pending: tuple[jax.Array, jax.Array, jax.Array] | None = None
    for batch in batches:
        _check_local_batch(batch, mesh)
        g = parallel.to_global(
            {"image": batch["image"], "label": batch["label"], "mask": batch["mask"]}, mesh
        )
        current = (embed_fn(g["image"]), g["label"], g["mask"])  # [B, D], [B], [B]
        # Fetch the previous batch only after dispatching this one, so the device computes
        # batch i while the host waits on the transfer of batch i-1 and reads batch i+1.
        if pending is not None:
            f, lab = _to_host(*pending)
            feats_out.append(f)
            labels_out.append(lab)
        pending = current
        poll()
    if pending is not None:
        f, lab = _to_host(*pending)
        feats_out.append(f)
        labels_out.append(lab)
    if not feats_out:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(feats_out), np.concatenate(labels_out)
