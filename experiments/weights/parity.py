"""Feature parity of imported and exported encoders with PyTorch, at full resolution.

    python experiments/weights/parity.py [--images=4] [--only=resnet50]

For ResNet-50 (torchvision layout, 224 px and an odd 225 px), ViT-S/16, ViT-B/16 and
ViT-S/8 (timm layout, 224 px): random weights (BN statistics included) -> a ``.pth`` file
-> ``ssl-jax import`` into a workdir (``configs/simclr.py:digits``, the backbone taken
from the file) -> ``ssl_jax.embed`` of the workdir, against the PyTorch model's eval-mode
features; then ``ssl-jax export --format=torchvision|timm`` of that workdir -> a strict
``load_state_dict`` into a fresh PyTorch model -> its features, against the same. Prints
one Markdown row per model: the largest absolute difference over the largest feature.

The PyTorch networks are the tests' (``tests/torch_nets.py``: torchvision's and timm's
definitions with their key names). The TF2 SimCLR and Haiku BYOL releases (``simclr``,
``byol`` rows, 224 px): the same random ResNet-50 written in the release's own format
(``tests/google_nets.py``: a SavedModel, a ``.pkl``) -> import -> features, against a
TensorFlow forward of the release's ResNet (its framework's padding); there is no PyTorch
export of them (``model.padding`` is not torchvision's), so that column reads "-". The
release wrappers around them (MoCo, MoCo v3, SimSiam, DINO, MAE) are tested in
``tests/test_weights_import.py`` on small networks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import google_nets  # noqa: E402
import torch  # noqa: E402
import torch_nets  # noqa: E402

import ssl_jax  # noqa: E402
from ssl_jax import catalog, export  # noqa: E402
from ssl_jax.weights import importer  # noqa: E402

MODELS = {
    # name: (PyTorch builder, export format, input side)
    "resnet50": (lambda: torch_nets.resnet50(num_classes=0), "torchvision", 224),
    "resnet50@225": (lambda: torch_nets.resnet50(num_classes=0), "torchvision", 225),
    "vit_small_patch16": (lambda: torch_nets.VisionTransformer(384, 12, 6, 16, 224), "timm", 224),
    "vit_base_patch16": (lambda: torch_nets.VisionTransformer(768, 12, 12, 16, 224), "timm", 224),
    "vit_small_patch8": (lambda: torch_nets.VisionTransformer(384, 12, 6, 8, 224), "timm", 224),
    "resnet50 (SimCLR TF2)": (lambda: torch_nets.resnet50(num_classes=0), "simclr", 224),
    "resnet50 (BYOL Haiku)": (lambda: torch_nets.resnet50(num_classes=0), "byol", 224),
}
GOOGLE_RELEASES = {"simclr": "simclr", "byol": "same"}  # format -> reference padding


def _google_release(sd: dict, fmt: str, directory: str) -> str:
    """The torchvision-key weights ``sd`` as the release file of ``fmt``; returns its path."""
    if fmt == "simclr":
        variables = {f"resnet_model/{k}": v for k, v in google_nets.simclr_paths(sd).items()}
        return google_nets.write_simclr(variables, os.path.join(directory, "saved_model"))
    haiku = google_nets.haiku_resnet(sd)
    return google_nets.write_byol(os.path.join(directory, "pretrain.pkl"), haiku, haiku)


def measure_google_release(name: str, num_images: int, directory: str) -> dict:
    build, fmt, side = MODELS[name]
    net = torch_nets.randomise(build())
    sd = {k: v.numpy() for k, v in net.state_dict().items() if "num_batches" not in k}
    path = _google_release(sd, fmt, directory)
    images = np.random.default_rng(0).normal(size=(num_images, side, side, 3)).astype(np.float32)
    want = google_nets.resnet_features(sd, images, GOOGLE_RELEASES[fmt])
    method = "simclr" if fmt == "simclr" else "byol"
    config = catalog.load_config(method, "digits", os.path.join(ROOT, "configs"))
    with config.unlocked():
        config.input.image_size = side
    workdir = os.path.join(directory, f"{fmt}_run")
    start = time.time()
    importer.import_checkpoint(path, fmt, config, workdir)
    module, variables = ssl_jax.load_encoder(workdir)  # the images are already normalised
    imported = np.asarray(module.apply(variables, images, train=False))
    return {
        "model": name,
        "format": fmt,
        "side": side,
        "import": _relative(imported, want),
        "export": None,
        "seconds": time.time() - start,
    }


def _features(net, images):
    with torch.no_grad():
        return net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def _relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def measure(name: str, num_images: int, directory: str) -> dict:
    build, fmt, side = MODELS[name]
    net = torch_nets.randomise(build())
    path = os.path.join(directory, f"{name}.pth")
    torch.save(net.state_dict(), path)
    images = np.random.default_rng(0).normal(size=(num_images, side, side, 3)).astype(np.float32)
    want = _features(net, images)

    config = catalog.load_config("simclr", "digits", os.path.join(ROOT, "configs"))
    with config.unlocked():
        config.input.image_size = 224  # a ViT's learned table keeps the file's 14 x 14 grid
    workdir = os.path.join(directory, f"{name}_run")
    start = time.time()
    importer.import_checkpoint(path, fmt, config, workdir)
    imported = ssl_jax.embed(workdir, images, batch_size=num_images)
    out = export.export_torch(workdir, fmt, os.path.join(directory, f"{name}.safetensors"))
    from safetensors.torch import load_file

    fresh = build()
    fresh.load_state_dict(load_file(out), strict=True)
    exported = _features(fresh.eval(), images)
    return {
        "model": name,
        "format": fmt,
        "side": side,
        "import": _relative(imported, want),
        "export": _relative(exported, want),
        "seconds": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    args = parser.parse_args()
    print("| model | layout | input | import -> ssl_jax | ssl_jax -> export -> PyTorch |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as directory:
        for name in MODELS:
            if args.only not in name:
                continue
            fmt = MODELS[name][1]
            measure_row = measure_google_release if fmt in GOOGLE_RELEASES else measure
            row = measure_row(name, args.images, directory)
            exported = "-" if row["export"] is None else f"{row['export']:.1e}"
            print(
                f"| {row['model']} | {row['format']} | {row['side']} px | "
                f"{row['import']:.1e} | {exported} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
