"""PyTorch reference training steps of MoCo v2, SimCLR, MAE and DINO, for a side-by-side
speed check.

Each step is written the way the official PyTorch code does it: eager mode, one Python call
per op, NCHW float32; with ``model.dtype="bfloat16"`` the forward pass and the loss run
under ``torch.autocast(dtype=torch.bfloat16)`` (AMP; bfloat16 needs no loss scaler), and
``make_step(..., channels_last=True)`` keeps a ResNet's activations in channels-last
memory, as NVIDIA's PyTorch ResNet recipes do. ``compile=True`` wraps the networks in
``torch.compile``. ``time_step`` times one of them (images/s, peak CUDA memory and
``torch.utils.flop_counter``'s count of the step's FLOPs).

* MoCo v2 (facebookresearch/moco builder.py + main_moco.py): query encoder forward and
  backward, momentum update of the key encoder and its forward under ``no_grad``, logits of
  each query against its key and a queue of K negatives, cross-entropy at temperature T,
  SGD (momentum 0.9, weight decay on every parameter), then the keys are enqueued.
* SimCLR (google-research/simclr objective.py + lars_optimizer.py, written in PyTorch): both
  views through one encoder and projection head, NT-Xent (``loss_a + loss_b``, the value
  ssl_jax reports) and LARS (trust ratio eta * ||w|| / ||g||, momentum 0.9; biases and
  BatchNorm parameters excluded from weight decay and from the adaptation).
* MAE (facebookresearch/mae main_pretrain.py + engine_pretrain.py): ``models_mae.py``'s
  forward (``tests/torch_nets.py`` ``MaskedAutoencoder.loss``: random masking, encoder on
  the visible patches, decoder on all, norm-pix MSE on the masked ones), AdamW
  (betas from the config; weight decay on all but biases and 1-D params, as timm's
  ``add_weight_decay``).
* DINO (facebookresearch/dino main_dino.py): ``MultiCropWrapper`` (the backbone once per
  crop resolution, the head on all crops), DINO's ``interpolate_pos_encoding`` for the local
  crops, the teacher on the two global crops, ``DINOLoss`` (centered, sharpened teacher
  against every other student crop, center EMA), AdamW, each gradient tensor clipped to the
  config's norm (``utils.clip_gradients``), then the EMA of the teacher.

Sizes (backbone, head, K, T, lr, weight decay, batch, image size) are read from the ssl_jax
config being compared, so both sides run the same shapes.

Differences from the reference implementations:
- The CIFAR ResNet is written here (torchvision's BasicBlock layout: 3x3 convs without
  bias, BN, 1x1 projection shortcut; kaiming-normal fan-out init) because torchvision is
  optional; the CIFAR stem is a 3x3 stride-1 conv without max-pool, as the MoCo CIFAR demo
  and SimCLR's CIFAR ResNet use. ImageNet-stem ResNets (ResNet-50) are torchvision's when
  it imports, else ``tests/torch_nets.py``'s copy of its ``resnet.py`` (same layers; the
  step's ``network`` attribute says which). The ViTs are ``tests/torch_nets.py``'s timm
  layout with its explicit attention (softmax of ``q k^T``, as timm 0.3.2 that MAE pins and
  DINO's own ViT compute it; ssl_jax's attention is explicit too), no fused SDPA kernel.
- DINO's student has no stochastic depth here (ssl_jax's has ``model.vit.drop_path``, 0.1
  in the ImageNet preset: one per-sample multiply per residual branch), its last layer is
  not frozen in the first epoch (a no-op afterwards) and the gradient clip multiplies by
  ``min(1, clip / (norm + 1e-6))`` instead of testing the coefficient on the host, the same
  values without a GPU sync per tensor.
- One process, no DistributedDataParallel: MoCo's shuffle BN (which needs several GPUs) is
  absent and both encoders normalise over the whole batch, as ssl_jax does with
  ``moco.bn_groups=1``; SimCLR's BN is global, as in ssl_jax.
- The lr, DINO's teacher temperature and momentum are constant (no schedule): a schedule
  costs nothing per step.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import torch_nets  # noqa: E402  (tests/torch_nets.py: torchvision's ResNet, timm's ViT, MAE)

from ssl_jax.models import RESNETS as JAX_RESNETS  # noqa: E402
from ssl_jax.models.vit import VITS  # noqa: E402

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


def imagenet_resnet(name: str, zero_init_residual: bool) -> tuple[nn.Module, str]:
    """(ResNet with the ImageNet stem and no classifier, where it comes from): torchvision's
    when it imports, else ``tests/torch_nets.py``'s (the same network, written out)."""
    block, stages, width = JAX_RESNETS[name]
    try:
        import torchvision

        net = getattr(torchvision.models, name)(zero_init_residual=zero_init_residual)
        source = f"torchvision {torchvision.__version__}"
    except Exception:  # noqa: BLE001  absent, or built for another torch
        cls = torch_nets.Bottleneck if block == "bottleneck" else torch_nets.BasicBlock
        net = torch_nets.ResNet(cls, list(stages), width=width, num_classes=0)
        source = "tests/torch_nets.py (no torchvision)"
        if zero_init_residual:  # torchvision: the last BN of every residual block
            for m in net.modules():
                if isinstance(m, cls):
                    nn.init.zeros_((m.bn3 if block == "bottleneck" else m.bn2).weight)
    net.fc = nn.Identity()
    return net, source


def encoder(config: Any) -> tuple[nn.Module, str]:
    """(backbone + projection head of ``config.model``, the backbone's source)."""
    name, stem = config.model.backbone, config.model.stem
    if stem == "imagenet" and name in JAX_RESNETS:
        backbone, source = imagenet_resnet(name, config.model.zero_init_residual)
        out_dim = backbone.inplanes  # both layouts: the last stage's output channels
    elif stem == "cifar" and name in RESNETS:
        stages, width = RESNETS[name]
        backbone = CifarResNet(stages, width, config.model.zero_init_residual)
        out_dim, source = backbone.out_dim, "torch_reference.CifarResNet"
    else:
        raise ValueError(
            f"the PyTorch reference has {list(RESNETS)} with the CIFAR stem and "
            f"{list(JAX_RESNETS)} with the ImageNet stem; got model.backbone={name!r}, "
            f"model.stem={stem!r}"
        )
    return nn.Sequential(backbone, mlp_head(out_dim, config.model.head)), source


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


def _decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """timm's add_weight_decay / DINO's get_params_groups: no decay on biases and 1-D
    params; frozen params (MAE's fixed position tables) left out."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0)]


def _adamw(config: Any, module: nn.Module) -> torch.optim.AdamW:
    o = config.optim
    groups = _decay_groups(module, o.weight_decay)
    return torch.optim.AdamW(groups, _scaled_lr(config), betas=(o.b1, o.b2), eps=o.eps)


def _vit_dims(config: Any) -> tuple[int, int, int, int, int]:
    """(width, depth, heads, patch, image size) of ``config.model``'s ViT."""
    width, depth, heads = VITS[config.model.backbone]
    heads = config.model.vit.get("num_heads", 0) or heads
    return width, depth, heads, config.model.vit.patch_size, config.input.image_size


class _Step:
    """Device, AMP and ``torch.compile`` handling shared by the steps."""

    network = ""  # where the backbone's definition comes from

    def __init__(self, config: Any, device: torch.device, channels_last: bool, compile: bool):
        self.device = torch.device(device)
        self.amp = config.model.dtype == "bfloat16"
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.compile = compile

    def place(self, module: nn.Module) -> nn.Module:
        return module.to(self.device, memory_format=self.memory_format)

    def compiled(self, fn):
        return torch.compile(fn) if self.compile else fn

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


class MoCoStep(_Step):
    """One MoCo v2 training step per call: ``step(im_q, im_k) -> loss``."""

    def __init__(self, config: Any, device="cpu", channels_last=False, compile=False):
        super().__init__(config, device, channels_last, compile)
        cfg = config.moco
        if cfg.symmetric:
            raise ValueError("the PyTorch reference has MoCo's asymmetric loss; moco.symmetric")
        self.m, self.t, self.k = cfg.momentum, cfg.temperature, cfg.queue_size
        encoder_q, self.network = encoder(config)
        self.encoder_q, self.encoder_k = self.place(encoder_q), self.place(encoder(config)[0])
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            pk.data.copy_(pq.data)
            pk.requires_grad = False
        self.forward_q, self.forward_k = (
            self.compiled(self.encoder_q),
            self.compiled(self.encoder_k),
        )
        self.queue = F.normalize(torch.randn(config.model.head.out_dim, self.k), dim=0)
        self.queue = self.queue.to(self.device)
        self.ptr = 0
        self.optimizer = torch.optim.SGD(
            self.encoder_q.parameters(),
            _scaled_lr(config),
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
        )

    def __call__(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            q = F.normalize(self.forward_q(im_q), dim=1)  # [B, D]
            with torch.no_grad():
                for pq, pk in zip(
                    self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True
                ):
                    pk.data.mul_(self.m).add_(pq.data, alpha=1.0 - self.m)
                k = F.normalize(self.forward_k(im_k), dim=1)  # [B, D]
            l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # [B, 1]
            l_neg = torch.einsum("nc,ck->nk", q, self.queue)  # [B, K]
            logits = torch.cat([l_pos, l_neg], dim=1) / self.t
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=self.device)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        b = k.shape[0]
        self.queue[:, self.ptr : self.ptr + b] = k.T
        self.ptr = (self.ptr + b) % self.k
        return loss.detach()


class SimCLRStep(_Step):
    """One SimCLR training step per call: ``step(view1, view2) -> loss``."""

    def __init__(self, config: Any, device="cpu", channels_last=False, compile=False):
        super().__init__(config, device, channels_last, compile)
        self.t = config.simclr.temperature
        model, self.network = encoder(config)
        self.model = self.place(model)
        self.forward = self.compiled(self.model)
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
        with self.autocast():
            z = F.normalize(self.forward(torch.cat([x1, x2])), dim=1)
            h1, h2 = z[:b], z[b:]
            mask = torch.eye(b, device=self.device) * LARGE_NUM
            logits_aa = h1 @ h1.T / self.t - mask
            logits_bb = h2 @ h2.T / self.t - mask
            logits_ab, logits_ba = h1 @ h2.T / self.t, h2 @ h1.T / self.t
            labels = torch.arange(b, device=self.device)
            loss = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels) + F.cross_entropy(
                torch.cat([logits_ba, logits_bb], 1), labels
            )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class MAEStep(_Step):
    """One MAE training step per call: ``step(images) -> loss`` (fresh mask noise)."""

    network = "tests/torch_nets.py MaskedAutoencoder (timm 0.3.2 blocks)"

    def __init__(self, config: Any, device="cpu", channels_last=False, compile=False):
        super().__init__(config, device, False, compile)
        cfg = config.mae
        if not cfg.norm_pix_loss:
            raise ValueError("the PyTorch reference has MAE's norm-pix loss; mae.norm_pix_loss")
        width, depth, heads, patch, size = _vit_dims(config)
        self.model = self.place(
            torch_nets.MaskedAutoencoder(
                width,
                depth,
                heads,
                patch,
                size,
                cfg.decoder_width,
                cfg.decoder_depth,
                cfg.decoder_heads,
            )
        )
        self.mask_ratio, self.num_patches = cfg.mask_ratio, (size // patch) ** 2
        self.loss = self.compiled(self.model.loss)
        self.optimizer = _adamw(config, self.model)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(images.shape[0], self.num_patches, device=self.device)  # [B, N]
        with self.autocast():
            loss = self.loss(images, noise, self.mask_ratio)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class DinoViT(torch_nets.VisionTransformer):
    """timm's ViT with DINO's ``interpolate_pos_encoding`` (vision_transformer.py), so the
    96-px local crops get the 224-px table resized bicubically."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image_size: int):
        super().__init__(dim, depth, heads, patch, image_size)
        self.patch = patch

    def interpolate_pos_encoding(self, npatch: int, w: int, h: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos, patch_pos = self.pos_embed[:, 0], self.pos_embed[:, 1:]
        dim, side = self.pos_embed.shape[-1], int(math.sqrt(n))
        w0, h0 = w // self.patch + 0.1, h // self.patch + 0.1  # DINO's +0.1 against rounding
        patch_pos = F.interpolate(
            patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / side, h0 / side),
            mode="bicubic",
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, h = x.shape[-2:]
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, w, h)
        return self.norm(self.blocks(x))[:, 0]


class MultiCropWrapper(nn.Module):
    """dino utils.MultiCropWrapper: the backbone once per run of same-size crops, the head
    on all their features together."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        runs = itertools.groupby(crops, key=lambda c: c.shape[-1])
        features = [self.backbone(torch.cat(list(run))) for _, run in runs]
        return self.head(torch.cat(features))


class DINOStep(_Step):
    """One DINO training step per call: ``step(global_1, global_2, *local_crops) -> loss``."""

    network = "tests/torch_nets.py VisionTransformer + DINOHead (dino's layout)"

    def __init__(self, config: Any, device="cpu", channels_last=False, compile=False):
        super().__init__(config, device, False, compile)
        cfg, head = config.dino, config.model.head
        width, depth, heads, patch, size = _vit_dims(config)

        def network() -> nn.Module:
            return MultiCropWrapper(
                DinoViT(width, depth, heads, patch, size),
                torch_nets.DINOHead(
                    width, head.out_dim, head.num_layers, head.hidden_dim, cfg.bottleneck_dim
                ),
            )

        self.student, self.teacher = self.place(network()), self.place(network())
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        if cfg.norm_last_layer:  # DINOHead: weight_g fixed to 1
            self.student.head.last_layer.weight_g.requires_grad = False
        self.forward_s, self.forward_t = self.compiled(self.student), self.compiled(self.teacher)
        self.tau_s, self.m_c, self.m = cfg.student_temp, cfg.center_momentum, cfg.momentum_teacher
        warm = cfg.warmup_teacher_temp_epochs > 0
        self.tau_t = cfg.warmup_teacher_temp if warm else cfg.teacher_temp  # epoch 0's
        self.center = torch.zeros(1, head.out_dim, device=self.device)
        self.clip = config.optim.clip_grad_per_param
        self.optimizer = _adamw(config, self.student)

    def loss(self, student_out: torch.Tensor, teacher_out: torch.Tensor, crops: int):
        """DINOLoss.forward, then its update_center."""
        s = (student_out / self.tau_s).chunk(crops)
        t = F.softmax((teacher_out - self.center) / self.tau_t, dim=-1).detach().chunk(2)
        total, terms = 0.0, 0
        for iq, q in enumerate(t):
            for v, sv in enumerate(s):
                if v != iq:
                    total = total + torch.sum(-q * F.log_softmax(sv, dim=-1), dim=-1).mean()
                    terms += 1
        with torch.no_grad():
            batch_center = teacher_out.sum(dim=0, keepdim=True) / len(teacher_out)
            self.center = self.center * self.m_c + batch_center * (1 - self.m_c)
        return total / terms

    def __call__(self, *crops: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            teacher_out = self.forward_t(list(crops[:2]))  # [2B, K]: global crops only
            student_out = self.forward_s(list(crops))  # [V B, K]
            loss = self.loss(student_out, teacher_out, len(crops))
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip:  # utils.clip_gradients, per tensor
            for p in self.student.parameters():
                if p.grad is not None:
                    norm = p.grad.detach().norm(2)
                    p.grad.mul_(torch.clamp(self.clip / (norm + 1e-6), max=1.0))
        self.optimizer.step()
        with torch.no_grad():  # EMA of the teacher, after the student's step
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
                pt.data.mul_(self.m).add_((1 - self.m) * ps.detach().data)
        return loss.detach()


STEPS = {"moco": MoCoStep, "simclr": SimCLRStep, "mae": MAEStep, "dino": DINOStep}


def make_step(config: Any, device="cpu", channels_last=False, compile=False) -> _Step:
    """The reference step of ``config.method`` at the config's sizes, on ``device``."""
    if config.method not in STEPS:
        raise ValueError(f"no PyTorch reference for method={config.method!r}; have {list(STEPS)}")
    return STEPS[config.method](config, device, channels_last, compile)


def crop_shapes(config: Any) -> list[tuple[int, int]]:
    """``[(crops per example, side)]`` of the config's views, the global size first: the
    view structure of ``pipeline.batch_spec`` (tests/test_device_check.py checks that they
    agree), read off the config without importing TensorFlow."""
    size = config.input.image_size
    sides = [view.get("size", 0) or size for view in config.input.views.values()]
    local = [s for s in sides if s != size]
    return [(len(sides) - len(local), size)] + ([(len(local), local[0])] if local else [])


def random_inputs(
    config: Any, seed: int = 0, device="cpu", channels_last=False
) -> tuple[torch.Tensor, ...]:
    """The step's arguments: float32 NCHW crops of the config's batch and views, one tensor
    per view: 2 for MoCo / SimCLR, 1 for MAE, the global crops then the local ones for
    DINO."""
    gen = torch.Generator().manual_seed(seed)
    b = config.input.global_batch_size
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return tuple(
        torch.randn((b, 3, side, side), generator=gen)
        .to(device)
        .contiguous(memory_format=memory_format)
        for crops, side in crop_shapes(config)
        for _ in range(crops)
    )


def time_step(
    config: Any,
    *,
    steps: int,
    warmup: int,
    device="cpu",
    channels_last=False,
    compile=False,
    count_flops=False,
    seed=0,
) -> dict[str, Any]:
    """Times the reference step: ``warmup`` untimed calls, then the median of ``steps``
    calls, each ended by reading the loss (which waits for the step's kernels).
    ``count_flops``: one more untimed call under ``torch.utils.flop_counter`` (convs and
    matmuls, forward and backward; eager only). Peak memory: ``max_memory_allocated`` of
    the process (CUDA only; None elsewhere)."""
    torch.manual_seed(seed)
    step = make_step(config, device, channels_last, compile)
    inputs = random_inputs(config, seed, device, channels_last)
    counted = None
    if count_flops and not compile:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            float(step(*inputs))
        counted = float(counter.get_total_flops())
    for _ in range(warmup):
        float(step(*inputs))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step(*inputs))
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    cuda = step.device.type == "cuda"
    return dict(
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        torch_device=torch.cuda.get_device_name(step.device) if cuda else step.device.type,
        torch_network=step.network,
        torch_amp_bf16=step.amp,
        torch_channels_last=channels_last,
        torch_compile=compile,
        torch_step_time_s=step_s,
        torch_step_times_s=times,
        torch_images_per_s=config.input.global_batch_size / step_s,
        torch_peak_memory_bytes=torch.cuda.max_memory_allocated(step.device) if cuda else None,
        torch_counted_flops_per_step=counted,
    )


def expected_initial_loss(config: Any) -> float:
    """The loss when every logit is equal (T -> infinity): log(K + 1) for MoCo (one
    positive, K negatives); 2 log(2B - 1) for SimCLR (loss_a + loss_b, each over 2B - 1
    non-masked candidates). At a finite T a random encoder departs from it: it maps all
    inputs to nearly one direction, so MoCo's positive logit is near 1/T while those of the
    random unit vectors of its initial queue are near 0, and its loss is far lower."""
    if config.method == "moco":
        return math.log(config.moco.queue_size + 1)
    return 2 * math.log(2 * config.input.global_batch_size - 1)
