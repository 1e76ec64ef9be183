"""PyTorch networks with the official key names, for the weight-parity tests.

torchvision and timm do not import beside this machine's CPU torch, so the two
architectures the releases use are written here from their definitions: torchvision's
``resnet.py`` (v1.5 bottleneck, stride on the 3x3 conv, ``downsample.0`` / ``.1``) and timm's
``vision_transformer.py`` (``patch_embed.proj``, pre-norm blocks, ``qkv`` as
``reshape(B, N, 3, heads, D / heads)``, exact GELU, LayerNorm eps 1e-6). Their
``state_dict()`` keys are the releases' keys; the tests check them against the key lists
of the official files.
"""

import warnings

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet; ``fc=None`` leaves the classifier out (``nn.Identity``)."""

    def __init__(self, block, layers, width=64, num_classes=1000, cifar_stem=False):
        super().__init__()
        self.inplanes = width
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        for i, blocks in enumerate(layers):
            layer = self._layer(block, width * 2**i, blocks, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
        self.fc = nn.Linear(self.inplanes, num_classes) if num_classes else nn.Identity()

    def _layer(self, block, planes, blocks, stride):
        layers = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet50(num_classes=1000):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


def resnet_tiny(num_classes=0):
    """ssl_jax's ``resnet_tiny`` (cifar stem) in torchvision's layout."""
    return ResNet(BasicBlock, [1, 1, 1, 1], width=16, num_classes=num_classes, cifar_stem=True)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm's ViT, class-token pool (``global_pool='token'``), ``num_classes=0``."""

    def __init__(self, dim, depth, heads, patch, image_size, num_classes=0):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def randomise(module, seed=0):
    """Every parameter and BN statistic drawn at random (BN running stats matter in eval)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith(("num_batches_tracked", "weight_g")):  # DINO's gain stays 1
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5)
            elif tensor.ndim == 4:  # Kaiming fan-in: activations keep their scale
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                scale = 0.05 if tensor.ndim > 1 else 0.1
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)
    return module.eval()


def moco_v2_fc(in_dim, hidden, out_dim):
    """moco builder.py ``mlp=True``: Linear -> ReLU -> Linear, both with biases."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def moco_v3_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """moco-v3 builder.py ``_build_mlp``: bias-free Linears, BN + ReLU between them, an
    affine-free BN last when ``last_bn``."""
    layers = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


def simsiam_projector(in_dim, hidden, out_dim):
    """simsiam builder.py: two bias-free Linear -> BN -> ReLU, then the encoder's own fc
    (with its bias, frozen there) -> affine-free BN."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
        nn.BatchNorm1d(out_dim, affine=False),
    )


def simsiam_predictor(dim, pred_dim):
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False),
        nn.BatchNorm1d(pred_dim),
        nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
    )


class DINOHead(nn.Module):
    """dino vision_transformer.py ``DINOHead`` (no BN, GELU, weight-normed last layer)."""

    def __init__(self, in_dim, out_dim, nlayers=3, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        with warnings.catch_warnings():  # deprecated, but what DINO's keys come from
            warnings.simplefilter("ignore", FutureWarning)
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))


def mae_sincos_table(width, grid):
    """models_mae.py's ``get_2d_sincos_pos_embed(width, grid, cls_token=True)``, as its
    util/pos_embed.py computes it: ``np.meshgrid(grid_w, grid_h)``, the first half of the
    channels from ``grid[0]`` (the column), each half ``[sin, cos]``."""
    import numpy as np

    def one_dim(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    coords = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    coords = np.stack(coords, axis=0).reshape(2, 1, grid, grid)
    table = np.concatenate([one_dim(width // 2, coords[0]), one_dim(width // 2, coords[1])], 1)
    return np.concatenate([np.zeros((1, width)), table]).astype(np.float32)


class MaskedAutoencoder(VisionTransformer):
    """models_mae.py ``MaskedAutoencoderViT`` with its key names: the timm encoder above
    (fixed sin-cos ``pos_embed``), ``mask_token``, ``decoder_embed``, a fixed
    ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``.
    ``forward`` stays the encoder's features; ``loss`` is ``forward_loss`` of
    ``forward_encoder`` / ``forward_decoder`` with the given noise (``norm_pix_loss``)."""

    def __init__(self, dim, depth, heads, patch, image_size, dec_dim, dec_depth, dec_heads):
        super().__init__(dim, depth, heads, patch, image_size)
        grid = image_size // patch
        self.patch = patch
        self.pos_embed = nn.Parameter(
            torch.from_numpy(mae_sincos_table(dim, grid))[None], requires_grad=False
        )
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(mae_sincos_table(dec_dim, grid))[None], requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads) for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, patch**2 * 3)

    def loss(self, imgs, noise, mask_ratio):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        n, length, dim = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, dim))
        mask = torch.ones([n, length], device=imgs.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        latent = self.norm(self.blocks(torch.cat([cls, x], dim=1)))

        y = self.decoder_embed(latent)
        tokens = self.mask_token.repeat(n, ids_restore.shape[1] + 1 - y.shape[1], 1)
        tokens = torch.cat([y[:, 1:, :], tokens], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[2]))
        y = torch.cat([y[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            y = block(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:, :]

        p, h = self.patch, imgs.shape[2] // self.patch
        target = imgs.reshape(n, 3, h, p, h, p)
        target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, h * h, p * p * 3)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()
