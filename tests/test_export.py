"""`ssl-jax export` and `ssl-jax list`."""

import flax.serialization
import jax
import numpy as np
import pytest
from helpers import finished_smoke_run, run_ssl_jax

import ssl_jax
from ssl_jax import export, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finished_smoke_run(tmp_path_factory)


def test_exported_backbone_loads_with_flax_alone_and_embeds_like_the_run(finished_run, tmp_path):
    config, workdir = finished_run
    path = export.export_backbone(workdir, str(tmp_path / "encoder.msgpack"))
    with open(path, "rb") as f:
        blob = flax.serialization.msgpack_restore(f.read())  # no ssl_jax needed
    setup, state = train.restore_state(config, workdir)
    state = jax.device_get(state)
    for got, want in (
        (blob["params"], state.params["backbone"]),
        (blob["batch_stats"], state.batch_stats["backbone"]),
    ):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)

    module, variables, source = export.load_exported(path)
    assert source["method"] == "moco" and source["step"] == 2
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    features = module.apply(variables, images, train=False)
    expected = setup.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        images,
        train=False,
        method="embed",
    )
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_export_of_a_workdir_without_a_run_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json; name the --workdir"):
        export.export_backbone(str(tmp_path))


def test_list_and_export_commands(finished_run):
    _, workdir = finished_run
    listed = run_ssl_jax("list")
    assert listed.returncode == 0, listed.stderr
    for expected in (
        "moco_v3",
        "resnet50",
        "vit_small",
        "npz:<path>",
        "  dino: ",
        "moco_v2:digits",
    ):
        assert expected in listed.stdout
    exported = run_ssl_jax("export", f"--workdir={workdir}")
    assert exported.returncode == 0, exported.stderr
    assert "backbone.msgpack" in exported.stdout


def test_load_encoder_hands_nnx_users_an_nnx_module_with_the_same_features(finished_run):
    from flax import nnx

    _, workdir = finished_run
    module, variables = ssl_jax.load_encoder(workdir)
    model = ssl_jax.load_encoder(workdir, nnx=True)
    assert isinstance(model, nnx.Module)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(model(images, train=False)),
        np.asarray(module.apply(variables, images, train=False)),
    )
    _, state = nnx.split(model)
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(variables))
