"""CMC: RGB -> Lab against the CIE formulas and known colours, the two half-width towers,
NCE in both directions (each Z estimated once) and the softmax form against NumPy
transcriptions of HobbitLong/CMC's NCEAverage / NCECriterion / NCESoftmaxLoss, each bank
updated at the batch's rows from its own view, and no gradient into the banks or Zs."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config, tiny_state

from ssl_jax import config_base, losses
from ssl_jax.methods import cmc, primitives
from ssl_jax.models.lab import LAB_MEAN, LAB_STD, rgb_to_lab
from ssl_jax.state import TrainState

N, B, D = 40, 8, 8


def np_rgb2lab(rgb, white=(0.95047, 1.0, 1.08883)):
    """CIE L*a*b* of sRGB in [0, 1], float64, as skimage.color.rgb2lab (D65, 2 degrees)."""
    rgb = np.asarray(rgb, np.float64)
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                  [0.019334, 0.119193, 0.950227]])  # fmt: skip
    xyz = lin @ m.T / np.array(white)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def test_rgb_to_lab_matches_the_cie_formulas_and_known_colours():
    rgb = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
    rgb[:4] = [[1, 1, 1], [0, 0, 0], [1, 0, 0], [0.01, 0.02, 0.03]]  # the last: linear segment
    lab = np.asarray(rgb_to_lab(jnp.asarray(rgb)))
    white_of_rgb = (0.950456, 1.0, 1.088754)  # the matrix's row sums
    np.testing.assert_allclose(lab, np_rgb2lab(rgb, white_of_rgb), atol=2e-3)
    np.testing.assert_allclose(lab, np_rgb2lab(rgb), atol=5e-3)  # skimage's rounded D65
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=1e-3)  # white
    gray = np.asarray(rgb_to_lab(jnp.linspace(0, 1, 11)[:, None] * jnp.ones(3)))
    np.testing.assert_allclose(gray[:, 1:], 0.0, atol=1e-4)  # no colour cast
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=1e-4)  # black
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=2e-2)  # sRGB red
    # The normalisation maps the channels' ranges to about [-1, 1].
    normed = (lab - np.array(LAB_MEAN)) / np.array(LAB_STD)
    assert np.abs(normed).max() <= 1.0 + 1e-3


def _config(num_negatives=16, softmax=False):
    c = config_base.base_config()
    c.method = "cmc"
    c.cmc = cmc.get_config()
    c.cmc.update(num_negatives=num_negatives, temperature=0.1, softmax=softmax)
    c.model.update(backbone="resnet_tiny", stem="cifar")
    c.model.head.update(num_layers=1, out_dim=D, use_bn=False, last_bn="none")
    c.input.update(global_batch_size=B, image_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    config_base.set_views(c, ml_collections.ConfigDict({"size": 0}))
    c.schedule.update(epochs=1.0, total_steps=5)
    c.schedule.num_examples = N
    return c


class Setup(NamedTuple):
    model: Any
    state: TrainState
    batch: dict


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = cmc.make_model(config)
    state = tiny_state(model, config, cmc.init_extra)
    batch = dict(
        views=jax.random.uniform(jax.random.key(1), (B, 1, 8, 8, 3)),
        index=jnp.asarray(np.random.default_rng(2).permutation(N)[:B], jnp.int32),
    )
    return Setup(model, state, batch)


def _loss(setup, config, params=None, extra=None):
    state = setup.state if extra is None else setup.state.replace(extra=extra)
    params = state.params if params is None else params
    return cmc.loss_fn(
        params, state, setup.batch, jax.random.key(3), model=setup.model, config=config
    )


def _views(setup):
    out, _ = primitives.apply_train(
        setup.model, setup.state.params, setup.state.batch_stats, setup.batch["views"][:, 0]
    )
    z = np.asarray(losses.l2_normalize(out["projection"]), np.float64)
    return z[:, 0], z[:, 1], np.asarray(out["embedding"])


def test_two_half_width_towers_one_for_l_one_for_ab(setup):
    backbone = setup.state.params["backbone"]
    assert backbone["l_net"]["conv1"]["kernel"].shape == (3, 3, 1, 8)  # resnet_tiny: 16 / 2
    assert backbone["ab_net"]["conv1"]["kernel"].shape == (3, 3, 2, 8)
    *_, embedding = _views(setup)
    assert embedding.shape == (B, 2 * 64)  # both towers' pooled features, concatenated
    assert set(setup.state.params["head"]) == {"l_head", "ab_head"}


def _np_nce_average(lum, ab, bank_l, bank_ab, rows, t):
    """NCEAverage.forward: out_ab = exp(V_l[idx] . ab / T), out_l = exp(V_ab[idx] . l / T),
    each divided by its Z = N * mean (set on the first call)."""
    out_ab = np.exp(np.einsum("bkd,bd->bk", bank_l[rows], ab) / t)
    out_l = np.exp(np.einsum("bkd,bd->bk", bank_ab[rows], lum) / t)
    z_l, z_ab = out_l.mean() * N, out_ab.mean() * N
    return out_l / z_l, out_ab / z_ab, z_l, z_ab


def _np_nce_criterion(x):
    eps, k, pn = 1e-7, x.shape[1] - 1, 1.0 / N
    return (
        -(
            np.log(x[:, 0] / (x[:, 0] + k * pn + eps)).sum()
            + np.log(k * pn / (x[:, 1:] + k * pn + eps)).sum()
        )
        / x.shape[0]
    )


def _rows(setup, k):
    return np.asarray(primitives.bank_sample(jax.random.key(3), setup.batch["index"], N, k))


def test_nce_in_both_directions_matches_nceaverage(setup):
    loss, aux = _loss(setup, _config(16))
    lum, ab, _ = _views(setup)
    banks = [np.asarray(setup.state.extra[f"bank_{v}"], np.float64) for v in ("l", "ab")]
    out_l, out_ab, z_l, z_ab = _np_nce_average(lum, ab, *banks, _rows(setup, 16), 0.1)
    expected = _np_nce_criterion(out_l) + _np_nce_criterion(out_ab)  # l_loss + ab_loss
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(aux["extra"]["nce_z"]["l"]), z_l, rtol=1e-5)
    np.testing.assert_allclose(float(aux["extra"]["nce_z"]["ab"]), z_ab, rtol=1e-5)


def test_the_softmax_form_is_nce_softmax_loss(setup):
    loss, _ = _loss(setup, _config(16, softmax=True))
    lum, ab, _ = _views(setup)
    bank_l, bank_ab = (np.asarray(setup.state.extra[f"bank_{v}"], np.float64) for v in ("l", "ab"))
    rows = _rows(setup, 16)
    expected = 0.0
    for x, bank in ((lum, bank_ab), (ab, bank_l)):  # NCESoftmaxLoss: label 0, the positive
        logits = np.einsum("bkd,bd->bk", bank[rows], x) / 0.1
        expected -= np.mean(logits[:, 0] - np.log(np.exp(logits).sum(axis=1)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_each_bank_moves_at_the_batchs_rows_towards_its_own_view(setup):
    config = _config(16)
    _, aux = _loss(setup, config)
    new = cmc.update_extra(setup.state.extra, params=None, aux=aux, step=0, config=config)
    index = np.asarray(setup.batch["index"])
    rest = np.setdiff1d(np.arange(N), index)
    for view, features in zip(("l", "ab"), _views(setup)[:2], strict=True):
        old, bank = np.asarray(setup.state.extra[f"bank_{view}"]), np.asarray(new[f"bank_{view}"])
        np.testing.assert_array_equal(bank[rest], old[rest])
        mixed = 0.5 * old[index] + 0.5 * features
        expected = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
        np.testing.assert_allclose(bank[index], expected, rtol=1e-5, atol=1e-6)
        assert float(new[f"nce_z_{view}"]) > 0


def test_no_gradient_reaches_the_banks_or_the_zs(setup):
    config = _config(16)
    extra = dict(setup.state.extra, nce_z_l=jnp.asarray(9.0), nce_z_ab=jnp.asarray(7.0))
    grads = jax.grad(lambda e: _loss(setup, config, extra=e)[0])(extra)
    assert not any(np.any(g) for g in jax.tree.leaves(grads))
    params_grad = jax.grad(lambda p: _loss(setup, config, params=p)[0])(setup.state.params)
    for tower in ("l_net", "ab_net"):
        assert np.any(params_grad["backbone"][tower]["conv1"]["kernel"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(model__backbone="vit_micro"), "CMC's two encoders are ResNets"),
        (dict(input__std=(0.5, 0.5, 0.5)), "converts RGB in \\[0, 1\\] to Lab itself"),
        (dict(cmc__num_negatives=0), "cmc.num_negatives=0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        cmc.validate(load_config("cmc", "smoke", **overrides))


def test_colour_digits_are_the_digits_in_isoluminant_hues():
    from ssl_jax.data.sources import load_source

    gray, colour = load_source("digits", "train"), load_source("colour_digits", "train")
    np.testing.assert_array_equal(colour.labels, gray.labels)
    assert colour.images.shape == gray.images.shape and colour.images.dtype == np.uint8
    ink = gray.images[..., 0]
    assert not colour.images[ink == 0].any()  # black background
    full = colour.images[ink == 255].astype(np.float32) / 255.0  # the strokes' full ink
    lab = np.asarray(rgb_to_lab(jnp.asarray(full)))
    assert np.abs(lab[:, 0] - 65.0).max() < 2.5  # one lightness: L does not show the hue
    assert lab[:, 1].std() > 20 and lab[:, 2].std() > 20  # the hues differ
