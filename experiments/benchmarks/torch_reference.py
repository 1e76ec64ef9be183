"""PyTorch reference training steps for MoCo v2 and SimCLR, for a side-by-side speed check.

Each step is written the way the official PyTorch code does it: eager mode, NCHW float32,
one Python call per op.

* MoCo v2 (facebookresearch/moco builder.py + main_moco.py): query encoder forward and
  backward, momentum update of the key encoder and its forward under ``no_grad``, logits of
  each query against its key and a queue of K negatives, cross-entropy at temperature T,
  SGD (momentum 0.9, weight decay on every parameter), then the keys are enqueued.
* SimCLR (google-research/simclr objective.py + lars_optimizer.py, written in PyTorch): both
  views through one encoder and projection head, NT-Xent (``loss_a + loss_b``, the value
  ssl_jax reports) and LARS (trust ratio eta * ||w|| / ||g||, momentum 0.9; biases and
  BatchNorm parameters excluded from weight decay and from the adaptation).

Sizes (backbone, head, K, T, lr, weight decay, batch, image size) are read from the ssl_jax
config being compared, so both sides run the same shapes.

Differences from the reference implementations:
- The ResNet is written here (torchvision's BasicBlock layout: 3x3 convs without bias, BN,
  1x1 projection shortcut; kaiming-normal fan-out init) because torchvision is optional;
  the CIFAR stem is a 3x3 stride-1 conv without max-pool, as the MoCo CIFAR demo and
  SimCLR's CIFAR ResNet use.
- One process, no DistributedDataParallel: MoCo's shuffle BN (which needs several GPUs) is
  absent and both encoders normalise over the whole batch, as ssl_jax does with
  ``moco.bn_groups=1``; SimCLR's BN is global, as in ssl_jax.
- The lr is constant (no schedule): a schedule costs nothing per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# name -> (blocks per stage, width): the BasicBlock ResNets of ssl_jax/models/__init__.py.
RESNETS = {"resnet_tiny": ((1, 1, 1, 1), 16), "resnet18": ((2, 2, 2, 2), 64)}
LARGE_NUM = 1e9  # simclr objective.py: masks each view's similarity with itself


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with the CIFAR stem (3x3/1 conv, no max-pool), pooled features [B, 8w]."""

    def __init__(self, stages: tuple[int, ...], width: int, zero_init_residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, n in enumerate(stages):
            for j in range(n):
                cout = width * 2**i
                blocks.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin
        for m in self.modules():  # torchvision resnet.py
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for b in blocks:
                nn.init.zeros_(b.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class _LastBN(nn.BatchNorm1d):
    """BatchNorm1d with gamma and/or beta switched off (ssl_jax heads' ``last_bn``)."""

    def __init__(self, dim: int, kind: str):
        super().__init__(dim, affine=kind != "no_affine")
        if kind == "scale":  # simclr: center=False
            self.bias.requires_grad_(False)


def mlp_head(in_dim: int, head: Any) -> nn.Sequential:
    """ssl_jax's MLPHead: hidden Linear (bias iff no BN) -> (BN) -> ReLU, last Linear ->
    optional BN."""
    layers, d = [], in_dim
    for _ in range(head.num_layers - 1):
        layers += [nn.Linear(d, head.hidden_dim, bias=not head.use_bn)]
        layers += [nn.BatchNorm1d(head.hidden_dim)] if head.use_bn else []
        layers += [nn.ReLU(inplace=True)]
        d = head.hidden_dim
    last_bn = head.last_bn != "none"
    layers.append(nn.Linear(d, head.out_dim, bias=head.last_bias and not last_bn))
    if last_bn:
        layers.append(_LastBN(head.out_dim, head.last_bn))
    return nn.Sequential(*layers)


def encoder(config: Any) -> nn.Module:
    name = config.model.backbone
    if name not in RESNETS or config.model.stem != "cifar":
        raise ValueError(
            f"the PyTorch reference has {list(RESNETS)} with the CIFAR stem; got "
            f"model.backbone={name!r}, model.stem={config.model.stem!r}"
        )
    stages, width = RESNETS[name]
    backbone = CifarResNet(stages, width, config.model.zero_init_residual)
    return nn.Sequential(backbone, mlp_head(backbone.out_dim, config.model.head))


class LARS(torch.optim.Optimizer):
    """simclr lars_optimizer.py: g += wd * w; lr_w = lr * eta * ||w|| / ||g|| (1 if either
    norm is 0); v = m * v + lr_w * g; w -= v. Groups with ``adapt=False`` (biases, BN) get
    neither weight decay nor the trust ratio."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, eta: float):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.eta = eta

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                lr = group["lr"]
                if group.get("adapt", True):
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0), self.eta * w_norm / g_norm, 1.0
                    )
                    g = g * ratio
                v = self.state[p].setdefault("v", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(g, alpha=lr)
                p.sub_(v)


def _scaled_lr(config: Any) -> float:
    scale = {"linear": config.input.global_batch_size / 256, "sqrt": 1.0}
    return config.optim.lr * scale.get(config.optim.lr_scaling, 1.0)


class MoCoStep:
    """One MoCo v2 training step per call: ``step(im_q, im_k) -> loss``."""

    def __init__(self, config: Any):
        cfg = config.moco
        if cfg.symmetric:
            raise ValueError("the PyTorch reference has MoCo's asymmetric loss; moco.symmetric")
        self.m, self.t, self.k = cfg.momentum, cfg.temperature, cfg.queue_size
        self.encoder_q = encoder(config)
        self.encoder_k = encoder(config)
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            pk.data.copy_(pq.data)
            pk.requires_grad = False
        self.queue = F.normalize(torch.randn(config.model.head.out_dim, self.k), dim=0)
        self.ptr = 0
        self.optimizer = torch.optim.SGD(
            self.encoder_q.parameters(),
            _scaled_lr(config),
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
        )

    def __call__(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.encoder_q(im_q), dim=1)  # [B, D]
        with torch.no_grad():
            for pq, pk in zip(
                self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True
            ):
                pk.data.mul_(self.m).add_(pq.data, alpha=1.0 - self.m)
            k = F.normalize(self.encoder_k(im_k), dim=1)  # [B, D]
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # [B, 1]
        l_neg = torch.einsum("nc,ck->nk", q, self.queue)  # [B, K]
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        b = k.shape[0]
        self.queue[:, self.ptr : self.ptr + b] = k.T
        self.ptr = (self.ptr + b) % self.k
        return loss.detach()


class SimCLRStep:
    """One SimCLR training step per call: ``step(view1, view2) -> loss``."""

    def __init__(self, config: Any):
        self.t = config.simclr.temperature
        self.model = encoder(config)
        adapt = [p for p in self.model.parameters() if p.ndim > 1]
        exclude = [p for p in self.model.parameters() if p.ndim <= 1 and p.requires_grad]
        self.optimizer = LARS(
            [dict(params=adapt), dict(params=exclude, adapt=False)],
            lr=_scaled_lr(config),
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
            eta=config.optim.trust_coefficient,
        )

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = x1.shape[0]
        z = F.normalize(self.model(torch.cat([x1, x2])), dim=1)
        h1, h2 = z[:b], z[b:]
        mask = torch.eye(b) * LARGE_NUM
        logits_aa = h1 @ h1.T / self.t - mask
        logits_bb = h2 @ h2.T / self.t - mask
        logits_ab, logits_ba = h1 @ h2.T / self.t, h2 @ h1.T / self.t
        labels = torch.arange(b)
        loss = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels) + F.cross_entropy(
            torch.cat([logits_ba, logits_bb], 1), labels
        )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_step(config: Any) -> MoCoStep | SimCLRStep:
    """The reference step of ``config.method`` ('moco' or 'simclr') at the config's sizes."""
    steps = {"moco": MoCoStep, "simclr": SimCLRStep}
    if config.method not in steps:
        raise ValueError(f"no PyTorch reference for method={config.method!r}; have {list(steps)}")
    return steps[config.method](config)


def random_views(config: Any, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 NCHW view batches of the config's global batch and image size."""
    gen = torch.Generator().manual_seed(seed)
    shape = (config.input.global_batch_size, 3, config.input.image_size, config.input.image_size)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def expected_initial_loss(config: Any) -> float:
    """The loss when every logit is equal (T -> infinity): log(K + 1) for MoCo (one
    positive, K negatives); 2 log(2B - 1) for SimCLR (loss_a + loss_b, each over 2B - 1
    non-masked candidates). At a finite T a random encoder departs from it: it maps all
    inputs to nearly one direction, so MoCo's positive logit is near 1/T while those of the
    random unit vectors of its initial queue are near 0, and its loss is far lower."""
    if config.method == "moco":
        return math.log(config.moco.queue_size + 1)
    return 2 * math.log(2 * config.input.global_batch_size - 1)
