"""ssl_jax backbones against PyTorch forwards with the official key layouts, both ways.

Random weights (BN statistics included) in torchvision's ResNet-50 and timm's ViT-S/16,
ViT-B/16, ViT-S/8 layouts -> ``ssl_jax.embed`` of the saved file must give the PyTorch
model's eval-mode features within 1e-4 relative; the layout converted back must load into
the PyTorch model with ``strict=True`` and be the same tensors. The ViTs run at reduced
resolutions (their position tables sized to match): the architecture is the same.
"""

import numpy as np
import pytest
import torch  # the README's test command installs it (requirements-torch.txt)
import torch_nets

import ssl_jax  # noqa: E402
from ssl_jax.weights import torch_layout  # noqa: E402

PARITY_RTOL = 1e-4

NETS = {
    # name: (builder, input side; 65 is odd: the stride-2 convs' padding is exercised)
    "resnet50": (lambda: torch_nets.resnet50(num_classes=1000), 65),
    "vit_small_patch16": (lambda: torch_nets.VisionTransformer(384, 12, 6, 16, 112), 112),
    "vit_base_patch16": (lambda: torch_nets.VisionTransformer(768, 12, 12, 16, 112), 112),
    "vit_small_patch8": (lambda: torch_nets.VisionTransformer(384, 12, 6, 8, 64), 64),
}


def _features(net, images):
    with torch.no_grad():
        out = net(torch.from_numpy(images).permute(0, 3, 1, 2))
    return out.numpy()


def relative_difference(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_imported_features_equal_pytorch_and_the_layout_goes_back(name, tmp_path):
    build, side = NETS[name]
    net = torch_nets.randomise(build())
    path = str(tmp_path / f"{name}.pth")
    torch.save(net.state_dict(), path)  # the plain state dict torchvision / timm save
    if hasattr(net, "fc"):
        net.fc = torch.nn.Identity()  # the encoder: pooled features
    images = np.random.default_rng(1).normal(size=(3, side, side, 3)).astype(np.float32)

    got = ssl_jax.embed(path, images, batch_size=2)  # two batches, the last one short
    want = _features(net, images)
    assert got.shape == want.shape
    assert relative_difference(got, want) < PARITY_RTOL

    module, variables = ssl_jax.load_encoder(path)
    kind = "vit" if name.startswith("vit") else "resnet"
    back = torch_layout.to_torch(variables["params"], variables.get("batch_stats", {}), kind)
    original = {k: v for k, v in net.state_dict().items()}
    assert sorted(back) == sorted(original)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()}, strict=True)
    for key, value in original.items():
        np.testing.assert_array_equal(np.asarray(back[key]), value.numpy(), err_msg=key)
