"""Host input-pipeline throughput: augmented pretraining samples per second.

    python experiments/benchmarks/input_pipeline.py --config=configs/simclr.py:cifar10
    python experiments/benchmarks/input_pipeline.py --config=configs/simclr.py:imagenet \
        --config.input.global_batch_size=64

Times ``pipeline.pretrain_iterator`` of the config (its views: two-view SimCLR crops,
flips, colour jitter, grey, blur where the recipe has it, normalisation) on generated
uint8 images written to a temporary ``.npz``, so nothing is downloaded: ``--source_size``
square images (default: the image size up to 64 px, as CIFAR's arrays are; else 256/224 of
it, ImageNet's usual resize). Decoding is not measured: array sources hold raw pixels, where
ImageNet's tfds records hold JPEGs. A sample is one source image with all its views.

tf.data runs its parallel map with AUTOTUNE on its shared thread pool (one thread per
core this process may use); the report gives that core count and images/s per core.
Any ``--config.`` override applies, e.g. ``--config.input.augment_on_device=True`` where
the config has it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

from ssl_jax import main as cli  # its --config flag and its flag parser

_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches after --warmup ones.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 3, "Untimed first batches (graph build, fill-up).")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 0, "Side of the generated images; 0: auto.")
_NUM_IMAGES = flags.DEFINE_integer("source_images", 512, "Generated images (epochs repeat).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the result as JSON here.")


def source_size(image_size: int) -> int:
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


def measure(config, *, batches: int, warmup: int, side: int, num_images: int) -> dict:
    """Samples/s of ``pretrain_iterator`` on ``num_images`` random ``side`` px images."""
    import numpy as np

    from ssl_jax.data import pipeline

    b = config.input.global_batch_size
    if batches < 1 or warmup < 0 or num_images < b:
        raise ValueError(
            f"need --batches={batches} >= 1, --warmup_batches={warmup} >= 0 and --source_images="
            f"{num_images} >= the global batch {b}"
        )
    path = os.path.join(tempfile.mkdtemp(prefix="ssl_jax_input_"), "images.npz")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, side, side, 3), np.uint8)
    np.savez(path, images=images, labels=np.zeros(num_images, np.int32))
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.input.update(dataset=f"npz:{path}", train_split="train")
    it = pipeline.pretrain_iterator(config.input, seed=config.seed)
    for _ in range(warmup):
        shapes = {k: v.shape for k, v in next(it).items()}
    start = time.perf_counter()
    for _ in range(batches):
        shapes = {k: v.shape for k, v in next(it).items()}
    seconds = time.perf_counter() - start
    os.remove(path)
    cores = len(os.sched_getaffinity(0))
    ips = b * batches / seconds
    return dict(
        config_views=sorted(config.input.views.keys()),
        image_size=config.input.image_size,
        source_size=side,
        global_batch_size=b,
        batch_shapes={k: list(s) for k, s in shapes.items()},
        augment_on_device=bool(config.input.get("augment_on_device", False)),
        cores=cores,
        images_per_s=ips,
        images_per_s_per_core=ips / cores,
        seconds=seconds,
    )


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = cli._CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/simclr.py:cifar10")
    side = _SOURCE_SIZE.value or source_size(config.input.image_size)
    r = measure(
        config,
        batches=_BATCHES.value,
        warmup=_WARMUP.value,
        side=side,
        num_images=_NUM_IMAGES.value,
    )
    print(
        f"input pipeline {r['image_size']} px (source {side} px, batch "
        f"{r['global_batch_size']}, {len(r['config_views'])} views, shapes "
        f"{r['batch_shapes']}): {r['images_per_s']:.1f} images/s on {r['cores']} cores = "
        f"{r['images_per_s_per_core']:.1f} images/s/core"
    )
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    app.run(_main, flags_parser=cli.parse_flags)
