"""Optimizers (SGD, LARS, AdamW), learning-rate scaling and the weight-decay mask.

- 'sgd' is PyTorch's ``torch.optim.SGD`` with coupled weight decay (MoCo v1/v2):
  ``b = m * b + (g + wd * w); w -= lr * b`` (nesterov: ``w -= lr * (g + wd * w + m * b)``).
- 'lars' has two forms, chosen by ``lars_lr_in_momentum``. Both first take
  ``u = g + wd * w`` and ``trust = eta * ||w|| / ||u||`` if both norms are > 0 else 1
  (eps 0), then:

  - ``lars_lr_in_momentum=True`` (default), SimCLR's ``LARSOptimizer`` with classic momentum
    (google-research/simclr tf2/lars_optimizer.py): ``v = m * v + lr_t * trust * u;
    w -= v``. ``optax.lars`` is exactly this chain (weight decay, trust ratio, learning
    rate, then momentum, so the lr sits inside the momentum buffer);
  - ``lars_lr_in_momentum=False``, BYOL's and MoCo v3's form (deepmind-research
    byol/utils/optimizers.py, whose optax chain byol_experiment.py rebuilds each step with
    that step's lr; facebookresearch/moco-v3 moco/optimizer.py; MAE's util/lars.py is the
    same file): ``mu = m * mu + trust * u; w -= lr_t * mu``, our chain of the same optax
    transforms with the learning rate moved after the momentum.

  Unrolled, ``v_t = sum_s m^(t-s) lr_s trust_s u_s`` against ``lr_t mu_t = lr_t sum_s
  m^(t-s) trust_s u_s``: the same step while the lr has been constant since step 0. During
  a linear warm-up (``lr_s`` proportional to s) and for a slowly varying ``trust * u`` the
  first form's step is smaller by a fraction of about ``m / ((1 - m) t)`` at step t (9 / t
  at m = 0.9), and after the warm-up the gap it left decays as ``m^(t - W)``. ``nesterov``
  is SimCLR's ``use_nesterov`` in the first form (``w -= m * v + lr_t * trust * u``) and
  PyTorch SGD's in the second (``w -= lr_t * (m * mu + trust * u)``; neither BYOL nor
  MoCo v3 has one). tests/test_optim.py checks both forms against NumPy transcriptions.
- 'larc' is SwAV's optimizer, NVIDIA apex's ``LARC(SGD(momentum, weight_decay),
  trust_coefficient, clip=False)`` (facebookresearch/swav main_swav.py): for a tensor
  with ``||w|| > 0`` and ``||g|| > 0``, ``u = (g + wd * w) * eta * ||w|| / (||g|| + wd *
  ||w|| + 1e-8)``, else ``u = g`` (no decay either); then PyTorch SGD ``b = m * b + u; w
  -= lr * b``. It differs from 'lars' in the trust ratio's denominator (``||g|| + wd
  ||w||``, not ``||g + wd w||``), its eps, and the lr after the momentum. apex adapts
  every tensor (SwAV sets no exclusion); ``exclude_bias_and_norm`` exempts the rank-1
  leaves from both the decay and the trust ratio, as for 'lars'. A constant weight decay
  only (``weight_decay_end`` None).
- 'adamw' is ``optax.adamw`` (decoupled decay ``w -= lr * wd * w`` as in PyTorch AdamW).

With ``exclude_bias_and_norm`` the leaves masked out by ``decay_mask`` (every leaf of rank
<= 1) get no weight decay and, for LARS, no trust-ratio adaptation. This is each
reference's rule on its own networks: SimCLR excludes names containing
'batch_normalization' or 'bias' from both, BYOL (``exclude_bias_and_norm``) the haiku
parameters named 'b' and those of modules whose name contains 'norm', MoCo v3 and MAE
every parameter with ``p.ndim <= 1``; in their ResNets and MLPs those are exactly the
biases and the BatchNorm scales and offsets.

Per-parameter rules, each a tuple of regexes searched in the "/"-joined parameter path
(e.g. ``predictor/dense0/kernel``), the first matching rule winning in this order:

- ``frozen_params``: never updated and given no optimizer state (MoCo v3's random patch
  projection, ``requires_grad=False`` in the reference);
- ``delayed_params``: not updated during the first ``delay_epochs`` (DINO's
  ``freeze_last_layer``: the reference drops those gradients, so PyTorch's AdamW neither
  moves the weights nor advances their moments or step count). They get their own copy of
  the optimizer whose state is held still while frozen and whose lr / wd schedules are
  shifted by the delay, so afterwards they follow the global schedules and their Adam
  bias correction starts at step 1, as a PyTorch parameter first seen then does;
- ``constant_lr_params``: trained at the peak lr without schedule (SimSiam's
  ``--fix-pred-lr`` for the predictor).

``no_decay_params`` (optional, default ``()``) exempts the matching leaves from weight decay
on top of the rank rule (MAE's fine-tuning ``no_weight_decay_list = {'pos_embed',
'cls_token', 'dist_token'}`` in util/lr_decay.py param_groups_lrd, whose class token and
position embedding are not 1-D); LARS keeps the rank rule for its trust ratio.

``layer_decay`` (optional, default 1.0 = off) is MAE's layer-wise lr decay (BEiT's, as in
facebookresearch/mae util/lr_decay.py): with L ViT blocks, each leaf's updates are scaled
by ``layer_decay ** (L + 1 - layer_id)``, ``layer_id`` from ``get_layer_id_for_vit``:
``backbone/cls_token``, ``backbone/pos_embed``, ``backbone/patch_embed/*`` -> 0,
``backbone/blocks_<i>/*`` -> i + 1, everything else (final norm, head) -> L + 1. Scaling
the optimizer's whole update is PyTorch's param-group ``lr_scale`` (``lr * lr_scale``,
util/lr_sched.py): it scales AdamW's decoupled ``lr * wd * w`` term too, and for the
momentum optimizers a constant factor commutes with the (linear) momentum buffer.

``weight_decay_end`` turns the weight decay into a per-step cosine from ``weight_decay`` to
``weight_decay_end`` (DINO: 0.04 -> 0.4), and ``clip_grad_per_param`` clips each gradient
tensor to that L2 norm before the optimizer (DINO's ``utils.clip_gradients``; not the
global norm).
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssl_jax import schedules

OPTIMIZERS = ("sgd", "lars", "larc", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def scaled_lr(optim_cfg: Any, global_batch_size: int) -> float:
    """Peak lr from the base lr: 'linear' lr * B / 256 (Goyal et al.; MoCo v3, SimSiam),
    'sqrt' lr * sqrt(B) (SimCLR's small-batch rule, e.g. 0.075 * sqrt(4096)), 'none' lr."""
    rule = optim_cfg.lr_scaling
    if rule == "linear":
        return optim_cfg.lr * global_batch_size / 256
    if rule == "sqrt":
        return optim_cfg.lr * math.sqrt(global_batch_size)
    if rule == "none":
        return float(optim_cfg.lr)
    raise ValueError(f"Unknown optim.lr_scaling {rule!r}; valid: {list(LR_SCALINGS)}.")


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: every leaf with ndim >= 2.

    The rule is rank-based: 1-D leaves are conv/dense biases and BatchNorm/LayerNorm
    scales and offsets, so for a ResNet this is exactly SimCLR's exclusion of
    'batch_normalization' and 'bias', and it matches DINO/MAE's ``ndim == 1`` rule for
    ViTs without depending on module names.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def path_name(path: tuple) -> str:
    """A tree path as the "/"-joined name the per-parameter regexes search."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(optim_cfg: Any) -> Any:
    """``True`` (decay every leaf) or a function params -> tree of bools: the rank rule of
    ``decay_mask`` when ``exclude_bias_and_norm``, and never the ``no_decay_params``."""
    patterns = [re.compile(p) for p in optim_cfg.get("no_decay_params", ())]
    by_rank = optim_cfg.exclude_bias_and_norm
    if not patterns:
        return decay_mask if by_rank else True

    def decays(path, p) -> bool:
        if by_rank and p.ndim <= 1:
            return False
        return not any(pattern.search(path_name(path)) for pattern in patterns)

    return lambda params: jax.tree_util.tree_map_with_path(decays, params)


_BLOCK = re.compile(r"^backbone/blocks_(\d+)/")
_EMBEDDING = re.compile(r"^backbone/(cls_token|pos_embed|patch_embed)(/|$)")


def vit_layer_id(name: str, depth: int) -> int:
    """MAE's ``get_layer_id_for_vit`` on our parameter names (util/lr_decay.py)."""
    if _EMBEDDING.search(name):
        return 0
    block = _BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    return depth + 1


def layer_decay_scales(params: Any, layer_decay: float) -> Any:
    """The lr multiplier ``layer_decay ** (L + 1 - layer_id)`` of every leaf (a tree of
    Python floats); L is the number of ``backbone/blocks_<i>`` of the tree."""
    names = [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    blocks = {int(m.group(1)) for m in map(_BLOCK.search, names) if m}
    if not blocks:
        raise ValueError(
            f"optim.layer_decay={layer_decay} needs a ViT backbone (parameters named "
            f"backbone/blocks_<i>/...); found none among {names[:4]}... Use layer_decay=1.0."
        )
    depth = max(blocks) + 1
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(layer_decay ** (depth + 1 - vit_layer_id(path_name(path), depth))),
        params,
    )


def scale_by_layer_decay(layer_decay: float) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its ``layer_decay_scales`` factor (stateless; the
    factors depend on the parameter names only, so they are constants under jit)."""

    def update(updates, state, params=None):
        del params
        scales = layer_decay_scales(updates, layer_decay)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def param_labels(optim_cfg: Any) -> Any:
    """A function params -> tree of labels ('frozen', 'delayed', 'constant' or 'default')."""
    rules = [
        ("frozen", optim_cfg.frozen_params),
        ("delayed", optim_cfg.delayed_params),
        ("constant", optim_cfg.constant_lr_params),
    ]
    compiled = [(label, [re.compile(p) for p in patterns]) for label, patterns in rules]

    def label_of(path) -> str:
        name = path_name(path)
        for label, patterns in compiled:
            if any(p.search(name) for p in patterns):
                return label
        return "default"

    return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: label_of(path), params)


def weight_decay_schedule(optim_cfg: Any, total_steps: int) -> optax.ScalarOrSchedule:
    """The constant ``weight_decay``, or DINO's cosine to ``weight_decay_end``."""
    start, end = optim_cfg.weight_decay, optim_cfg.weight_decay_end
    if end is None:
        return start
    return lambda step: schedules.cosine_increase(start, end, step, total_steps)


def make_optimizer(
    optim_cfg: Any,
    lr_schedule: optax.ScalarOrSchedule,
    *,
    peak_lr: float | None = None,
    total_steps: int = 0,
    delay_steps: int = 0,
) -> optax.GradientTransformation:
    """The optimizer named by ``optim_cfg.name`` with the per-parameter rules above.

    ``lr_schedule`` is the peak-scaled lr; ``peak_lr`` serves ``constant_lr_params``;
    ``total_steps`` the weight-decay cosine; ``delay_steps`` the ``delayed_params``.
    """
    wd = weight_decay_schedule(optim_cfg, total_steps)
    transforms = {
        "default": _base_optimizer(optim_cfg, lr_schedule, wd),
        "frozen": optax.set_to_zero(),
    }
    if optim_cfg.constant_lr_params:
        if peak_lr is None:
            raise ValueError("optim.constant_lr_params needs the peak lr")
        transforms["constant"] = _base_optimizer(optim_cfg, peak_lr, wd)
    if optim_cfg.delayed_params:
        shifted_lr = _shifted(lr_schedule, delay_steps)
        inner = _base_optimizer(optim_cfg, shifted_lr, _shifted(wd, delay_steps))
        transforms["delayed"] = skip_first_steps(inner, delay_steps)
    labels = param_labels(optim_cfg)
    tx = optax.multi_transform(transforms, labels)
    layer_decay = optim_cfg.get("layer_decay", 1.0)
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"optim.layer_decay={layer_decay} must be in (0, 1] (1.0: off).")
    if layer_decay != 1.0:
        tx = optax.chain(tx, scale_by_layer_decay(layer_decay))
    if optim_cfg.clip_grad_per_param > 0:
        tx = optax.chain(clip_each_tensor(optim_cfg.clip_grad_per_param), tx)
    return tx


def _shifted(schedule: optax.ScalarOrSchedule, steps: int) -> optax.ScalarOrSchedule:
    """A schedule read ``steps`` later: for a copy of the optimizer that starts late."""
    if not callable(schedule) or steps == 0:
        return schedule
    return lambda count: schedule(count + steps)


def _base_optimizer(
    optim_cfg: Any, lr: optax.ScalarOrSchedule, wd: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
    name = optim_cfg.name
    # optax evaluates a callable mask on the params at init/update time, so the mask
    # follows whatever tree the method optimises.
    mask = weight_decay_mask(optim_cfg)
    trust_mask = decay_mask if optim_cfg.exclude_bias_and_norm else True
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask),
            optax.trace(decay=optim_cfg.momentum, nesterov=optim_cfg.nesterov),
            optax.scale_by_learning_rate(lr),
        )
    if name == "lars":
        lr_in_momentum = optim_cfg.get("lars_lr_in_momentum", True)
        if not isinstance(lr_in_momentum, bool):
            raise ValueError(
                f"optim.lars_lr_in_momentum={lr_in_momentum!r} must be True (SimCLR: "
                "v = m v + lr trust u; w -= v) or False (BYOL, MoCo v3: mu = m mu + trust u; "
                "w -= lr mu)."
            )
        if lr_in_momentum:
            return optax.lars(
                lr,
                weight_decay=wd,
                weight_decay_mask=mask,
                trust_coefficient=optim_cfg.trust_coefficient,
                eps=0.0,
                trust_ratio_mask=trust_mask,
                momentum=optim_cfg.momentum,
                nesterov=optim_cfg.nesterov,
            )
        # optax.lars's transforms with the lr after the momentum: the buffer holds the
        # trust-scaled updates alone, and each step's lr scales the whole buffer.
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask),
            optax.masked(
                optax.scale_by_trust_ratio(trust_coefficient=optim_cfg.trust_coefficient, eps=0.0),
                trust_mask,
            ),
            optax.trace(decay=optim_cfg.momentum, nesterov=optim_cfg.nesterov),
            optax.scale_by_learning_rate(lr),
        )
    if name == "larc":
        if callable(wd):
            raise ValueError(
                "optim.name='larc' takes a constant weight decay (apex LARC reads the SGD "
                f"group's); unset optim.weight_decay_end={optim_cfg.weight_decay_end}."
            )
        return optax.chain(
            scale_by_larc(optim_cfg.trust_coefficient, wd, mask=mask),
            optax.trace(decay=optim_cfg.momentum, nesterov=optim_cfg.nesterov),
            optax.scale_by_learning_rate(lr),
        )
    if name == "adamw":
        return optax.adamw(
            lr,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=wd,
            mask=None if mask is True else mask,
        )
    raise ValueError(f"Unknown optim.name {name!r}; valid names: {list(OPTIMIZERS)}.")


LARC_EPS = 1e-8  # apex.parallel.LARC's default eps


def scale_by_larc(
    trust_coefficient: float, weight_decay: float, *, mask: Any = True
) -> optax.GradientTransformation:
    """apex LARC's gradient rewrite with SGD's coupled decay folded in (see the module
    docstring); ``mask`` (True, or params -> tree of bools) selects the adapted leaves,
    the others pass their gradient unchanged."""

    def adapt(g: jax.Array, w: jax.Array, on: bool) -> jax.Array:
        if not on:
            return g
        w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
        trust = trust_coefficient * w_norm / (g_norm + w_norm * weight_decay + LARC_EPS)
        adapted = (g + weight_decay * w) * trust
        return jnp.where((w_norm > 0) & (g_norm > 0), adapted, g)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_larc needs the params")
        on = mask(params) if callable(mask) else jax.tree.map(lambda _: bool(mask), params)
        return jax.tree.map(adapt, updates, params, on), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class SkipFirstState(NamedTuple):
    count: jax.Array
    inner: Any


def skip_first_steps(
    inner: optax.GradientTransformation, steps: int
) -> optax.GradientTransformation:
    """Zero updates and an unchanged ``inner`` state for the first ``steps`` updates."""

    def init(params):
        return SkipFirstState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        active = state.count >= steps
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
        return new_updates, SkipFirstState(optax.safe_increment(state.count), new_inner)

    return optax.GradientTransformation(init, update)


def clip_each_tensor(max_norm: float) -> optax.GradientTransformation:
    """Scales each gradient tensor whose L2 norm exceeds ``max_norm`` down to it
    (DINO's ``clip_gradients``: factor ``max_norm / (norm + 1e-6)`` when below 1)."""

    def clip(g: jax.Array) -> jax.Array:
        coef = max_norm / (jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) + 1e-6)
        return jnp.where(coef < 1.0, g * coef.astype(g.dtype), g)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
