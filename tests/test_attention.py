"""DINO attention maps (ssl_jax/evaluate/attention.py): the class token's last-block
attention per head on the patch grid, the 60%-mass mask against the reference script's
procedure, nearest upsampling and the figure."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.evaluate import attention
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.resnet import ResNet
from ssl_jax.models.vit import ViT

HEADS, PATCH = 4, 4


def vit() -> ViT:
    return ViT(width=32, depth=2, heads=HEADS, patch_size=PATCH, image_size=16, pos_embed="learned")


def images(height=16, width=16, batch=3) -> jnp.ndarray:
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(batch, height, width, 3)), jnp.float32)


@functools.cache
def vit_variables() -> dict:
    return vit().init(jax.random.key(0), images(), train=False)


def reference_mask(att: np.ndarray, threshold: float) -> np.ndarray:
    """facebookresearch/dino visualize_attention.py for one image ``[nh, N]``, line by
    line in NumPy (torch.sort / cumsum / argsort, then the per-head inverse permutation)."""
    idx = np.argsort(att, axis=1, kind="stable")
    val = np.take_along_axis(att, idx, axis=1)
    val = val / np.sum(val, axis=1, keepdims=True)
    cumval = np.cumsum(val, axis=1)
    th_attn = cumval > (1 - threshold)
    idx2 = np.argsort(idx, axis=1)
    for head in range(att.shape[0]):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn


def test_mass_mask_by_hand():
    att = np.array([[0.5, 0.3, 0.15, 0.05]], np.float32).reshape(1, 2, 2)
    # ascending 0.05, 0.15, 0.3, 0.5 -> cumsum 0.05, 0.2, 0.5, 1.0; > 0.4 keeps 0.3 and 0.5
    expected = np.array([[True, True], [False, False]])
    np.testing.assert_array_equal(attention.mass_threshold_mask(att, keep=0.6)[0], expected)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_mass_mask_matches_the_reference_script(keep):
    rng = np.random.default_rng(1)
    att = rng.dirichlet(np.full(64, 0.3), size=(5, 6)).astype(np.float32)  # [B, heads, N]
    ours = attention.mass_threshold_mask(att.reshape(5, 6, 8, 8), keep=keep).reshape(5, 6, 64)
    for b in range(5):
        np.testing.assert_array_equal(ours[b], reference_mask(att[b], keep))
    # The kept patches hold at least `keep` of the mass; dropping the weakest kept one
    # would fall below it (the mask is the smallest such set).
    norm = att / att.sum(-1, keepdims=True)
    kept = np.where(ours, norm, 0.0).sum(-1)
    weakest = np.where(ours, norm, np.inf).min(-1)
    assert np.all(kept >= keep - 1e-6) and np.all(kept - weakest < keep + 1e-6)


def test_mass_mask_rejects_bad_keep():
    with pytest.raises(ValueError, match="keep=0"):
        attention.mass_threshold_mask(np.ones((2, 2)), keep=0.0)


def test_class_token_attention_is_row_zero_of_the_sown_probabilities():
    model, variables, x = vit(), vit_variables(), images()
    maps = attention.class_token_attention(model, variables, x)
    assert maps.shape == (3, HEADS, 4, 4) and maps.dtype == np.float32
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    (probs,) = state["intermediates"]["attention"]  # [B, heads, 1+N, 1+N]
    np.testing.assert_allclose(maps.reshape(3, HEADS, 16), probs[:, :, 0, 1:], rtol=1e-5)
    # The patches get the softmax row minus the class token's weight on itself.
    np.testing.assert_allclose(maps.sum((-2, -1)) + probs[:, :, 0, 0], 1.0, rtol=1e-5)


def test_rectangular_images_give_a_row_major_grid():
    model, variables = vit(), vit_variables()
    maps = attention.class_token_attention(model, variables, images(height=8, width=16))
    assert maps.shape == (3, HEADS, 2, 4)
    assert attention.patch_grid((8, 16), 8) == (2, 4, 4)
    with pytest.raises(ValueError, match="7 patch tokens"):
        attention.patch_grid((8, 16), 7)


def test_an_encoder_gives_its_backbone_maps():
    encoder = Encoder(backbone=vit(), head=MLPHead(num_layers=2, hidden_dim=8, out_dim=4))
    x = images()
    variables = encoder.init(jax.random.key(0), x, train=False)
    backbone_vars = {"params": variables["params"]["backbone"]}
    np.testing.assert_allclose(
        attention.class_token_attention(encoder, variables, x),
        attention.class_token_attention(vit(), backbone_vars, x),
        rtol=1e-6,
    )


def test_a_model_without_a_vit_is_refused():
    model = ResNet(stage_sizes=(1,), block="basic", width=4, stem="cifar")
    x = images(batch=2)
    variables = model.init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="found 0"):
        attention.class_token_attention(model, variables, x)


def test_upsample_repeats_each_patch():
    maps = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    up = attention.upsample(maps, 2)
    assert up.shape == (1, 4, 6)
    np.testing.assert_array_equal(up[0, :2, :2], 0.0)
    np.testing.assert_array_equal(up[0, 2:, 4:], 5.0)


def test_figure_has_image_heads_and_mask_columns():
    att = np.random.default_rng(0).dirichlet(np.ones(16), size=(2, HEADS)).reshape(2, HEADS, 4, 4)
    pictures = np.zeros((2, 16, 16, 3), np.uint8)
    fig = attention.attention_figure(pictures, att)
    assert len(fig.axes) == 2 * (HEADS + 2)
    assert fig.axes[HEADS + 1].get_title() == "60% mass, mean"
