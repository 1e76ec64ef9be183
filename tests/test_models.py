"""BatchNorm groups, ResNet shapes / parameter counts, MLP heads and the Encoder."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax.models import make_backbone
from ssl_jax.models.encoder import Encoder, make_encoder
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.resnet import BasicBlock, BatchNorm, Bottleneck

EPS = 1e-5


def model_config(backbone="resnet_tiny", stem="cifar", dtype="float32", **head):
    head_cfg = dict(num_layers=2, hidden_dim=32, out_dim=8, use_bn=True, last_bn="scale")
    head_cfg.update(head)
    return ml_collections.ConfigDict(
        dict(
            backbone=backbone,
            stem=stem,
            bn_momentum=0.9,
            bn_epsilon=EPS,
            zero_init_residual=False,
            dtype=dtype,
            head=head_cfg,
        )
    )


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def numpy_bn(x, groups):
    """Per-chunk normalisation and the (mean, unbiased var) averaged over chunks."""
    chunks = np.split(x.astype(np.float64), groups, axis=0)
    axes = tuple(range(x.ndim - 1))
    ys = [(c - c.mean(axes)) / np.sqrt(c.var(axes) + EPS) for c in chunks]
    mean = np.mean([c.mean(axes) for c in chunks], axis=0)
    var = np.mean([c.var(axes, ddof=1) for c in chunks], axis=0)
    return np.concatenate(ys), mean, var


def run_bn(x, groups, momentum=0.9):
    bn = BatchNorm(groups=groups, momentum=momentum, epsilon=EPS)
    variables = bn.init(jax.random.key(0), x, train=True)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    return y, updates["batch_stats"]


@pytest.mark.parametrize("groups", [1, 4])
def test_batchnorm_groups_match_numpy_per_chunk(groups):
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 3, 3, 5)).astype(np.float32)
    y, _ = run_bn(jnp.asarray(x), groups)
    expected, _, _ = numpy_bn(x, groups)
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_batchnorm_running_stats_mean_of_groups_unbiased_var():
    x = np.random.default_rng(1).normal(1.0, 2.0, (8, 2, 2, 3)).astype(np.float32)
    _, stats = run_bn(jnp.asarray(x), groups=2, momentum=0.7)
    _, mean, var = numpy_bn(x, 2)
    np.testing.assert_allclose(stats["mean"], 0.3 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.7 + 0.3 * var, rtol=1e-5)


def test_batchnorm_groups_one_is_global_batch_norm():
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    y, stats = run_bn(jnp.asarray(x), groups=1)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + EPS), atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)


def test_batchnorm_groups_same_on_sharded_batch():
    # Global-view semantics: splitting the batch over 8 devices changes nothing.
    x = jax.random.normal(jax.random.key(3), (16, 2, 2, 3))
    bn = BatchNorm(groups=4)
    variables = bn.init(jax.random.key(0), x, train=True)
    apply = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))
    (y1, s1), (y8, s8) = apply(variables, x), apply(variables, sharded)
    np.testing.assert_allclose(y1, y8, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1, s8)


def test_batchnorm_eval_uses_running_stats():
    bn = BatchNorm()
    x = jnp.arange(12.0).reshape(4, 3)
    variables = bn.init(jax.random.key(0), x, train=False)
    stats = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    y = bn.apply({**variables, "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(y, (x - stats["mean"]) / np.sqrt(stats["var"] + EPS), rtol=1e-5)


def test_batchnorm_init_keeps_running_stats():
    bn = BatchNorm()
    stats = bn.init(jax.random.key(0), jnp.ones((4, 3)), train=True)["batch_stats"]
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)


def test_batchnorm_indivisible_batch_names_both():
    with pytest.raises(ValueError, match=r"batch size 6.*groups=4"):
        BatchNorm(groups=4).init(jax.random.key(0), jnp.ones((6, 3)), train=True)


def test_batchnorm_scale_and_bias_flags():
    bn = BatchNorm(use_scale=True, use_bias=False)
    params = bn.init(jax.random.key(0), jnp.ones((4, 3)), train=True)["params"]
    assert set(params) == {"scale"}


def abstract_init(backbone, stem, shape=(2, 224, 224, 3)):
    module = make_backbone(model_config(backbone, stem))
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    return variables, out


@pytest.mark.parametrize(
    "backbone, params, dim",
    [("resnet18", 11_176_512, 512), ("resnet34", 21_284_672, 512), ("resnet50", 23_508_032, 2048)],
)
def test_resnet_parameter_count_and_output_shape(backbone, params, dim):
    # torchvision resnet18/34/50 totals minus the fc layer (512*1000+1000, 2048*1000+1000).
    variables, out = abstract_init(backbone, "imagenet")
    assert count(variables["params"]) == params
    assert out.shape == (2, dim) and out.dtype == jnp.float32


def test_resnet_cifar_stem_is_3x3_without_pool():
    variables, _ = abstract_init("resnet18", "cifar", shape=(2, 32, 32, 3))
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert count(variables["params"]) == 11_176_512 - (7 * 7 - 3 * 3) * 3 * 64


def test_resnet_imagenet_stem_downsamples_32x():
    module = make_backbone(model_config("resnet_tiny", "imagenet"))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    capture = lambda v, x: module.apply(
        v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    _, state = jax.eval_shape(capture, variables, x)
    assert state["intermediates"]["layer4_0"]["__call__"][0].shape == (2, 2, 2, 128)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50"):
        make_backbone(model_config("resnet99"))


@pytest.mark.parametrize("block, last", [(BasicBlock, "bn2"), (Bottleneck, "bn3")])
def test_zero_init_residual_zeroes_last_bn_gamma(block, last):
    module = block(features=4, strides=2, zero_init_residual=True)
    params = module.init(jax.random.key(0), jnp.ones((2, 4, 4, 8)), train=False)["params"]
    np.testing.assert_array_equal(params[last]["scale"], 0.0)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["downsample_bn"]["scale"], 1.0)


def test_make_backbone_passes_zero_init_residual():
    cfg = model_config()
    cfg.zero_init_residual = True
    assert make_backbone(cfg).zero_init_residual


def test_resnet_bn_groups_reach_every_batchnorm():
    module = make_backbone(model_config("resnet_tiny"), bn_groups=4)
    with pytest.raises(ValueError, match="groups=4"):
        module.init(jax.random.key(0), jnp.ones((6, 8, 8, 3)), train=True)


def init_head(**kwargs):
    head = MLPHead(**{"num_layers": 2, "hidden_dim": 16, "out_dim": 4, **kwargs})
    x = jnp.ones((4, 8))
    variables = head.init(jax.random.key(0), x, train=True)
    return head, variables


def shapes(tree):
    return jax.tree.map(lambda a: a.shape, tree)


def test_head_moco_v1_is_one_dense():
    _, variables = init_head(num_layers=1)
    assert shapes(variables["params"]) == {"dense0": {"kernel": (8, 4), "bias": (4,)}}


def test_head_moco_v2_dense_relu_dense_with_biases():
    _, variables = init_head(use_bn=False, last_bn="none")
    assert shapes(variables["params"]) == {
        "dense0": {"kernel": (8, 16), "bias": (16,)},
        "dense1": {"kernel": (16, 4), "bias": (4,)},
    }
    assert "batch_stats" not in variables


def test_head_simclr_bn_and_scale_only_last_bn():
    _, variables = init_head(use_bn=True, last_bn="scale")
    assert shapes(variables["params"]) == {
        "dense0": {"kernel": (8, 16)},
        "bn0": {"scale": (16,), "bias": (16,)},
        "dense1": {"kernel": (16, 4)},
        "bn1": {"scale": (4,)},
    }


@pytest.mark.parametrize("last_bn, keys", [("affine", {"scale", "bias"}), ("no_affine", None)])
def test_head_last_bn_variants(last_bn, keys):
    _, variables = init_head(use_bn=False, last_bn=last_bn)
    params = variables["params"]
    assert "bias" not in params["dense1"]
    assert set(params.get("bn1", {})) == (keys or set())
    assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}


def test_head_no_affine_output_is_standardised():
    head, variables = init_head(use_bn=False, last_bn="no_affine")
    x = jax.random.normal(jax.random.key(1), (4, 8))
    y, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(0), 1.0, atol=1e-3)


def test_head_unknown_last_bn():
    with pytest.raises(ValueError, match="no_affine"):
        init_head(last_bn="center")


@pytest.fixture(scope="module")
def encoder_variables():
    # Parameters are float32 whatever the compute dtype, so one init serves both dtypes.
    # The 'rbg' key compiles several times faster than threefry on CPU.
    key = jax.random.key(1, impl="rbg")
    init = jax.jit(lambda x: make_encoder(model_config()).init(key, x, train=False))
    return init(jnp.ones((4, 16, 16, 3)))


def test_encoder_params_split_into_backbone_and_head(encoder_variables):
    assert set(encoder_variables["params"]) == {"backbone", "head"}
    leaves = jax.tree.leaves(encoder_variables["params"])
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encoder_outputs_float32(encoder_variables, dtype):
    model = make_encoder(model_config(dtype=dtype))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    out, _ = apply(encoder_variables, x)
    assert out["embedding"].shape == (4, 128) and out["embedding"].dtype == jnp.float32
    assert out["projection"].shape == (4, 8) and out["projection"].dtype == jnp.float32


def test_encoder_embed_is_backbone_in_eval_mode(encoder_variables):
    model = make_encoder(model_config())
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    embed = jax.jit(lambda v, x: model.apply(v, x, method=Encoder.embed))
    backbone_vars = {k: v["backbone"] for k, v in encoder_variables.items()}
    backbone = jax.jit(lambda v, x: model.backbone.apply(v, x, train=False))
    np.testing.assert_allclose(embed(encoder_variables, x), backbone(backbone_vars, x), atol=1e-6)
