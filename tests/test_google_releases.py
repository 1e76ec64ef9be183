"""`ssl-jax import` of SimCLR's TF2 checkpoints and BYOL's Haiku pickle, written here in
the releases' formats (``google_nets``) from random torchvision-layout ResNet-50 weights:
the imported encoder's features equal a TensorFlow forward of the release's ResNet
(padding as its framework's) within 1e-4 relative, the heads land where ssl_jax's are,
and a pickle naming anything else is refused by name."""

import json
import os
import pickle

import google_nets
import numpy as np
import pytest
import torch_nets
from helpers import load_config

import ssl_jax
from ssl_jax import export, pretrained
from ssl_jax.weights import google_releases, importer, restricted_pickle, tf_checkpoint
from ssl_jax.weights.tensor_files import TensorFileError
from ssl_jax.weights.torch_layout import LayoutError

SIDE = 32  # even at every stride: TF's 'SAME' pads unlike PyTorch all the way down
RTOL = 1e-4
FEATURES = 2048


def _resnet50(seed):
    net = torch_nets.randomise(torch_nets.resnet50(num_classes=0), seed)
    return {k: v.numpy() for k, v in net.state_dict().items() if "num_batches" not in k}


def _images():
    return np.random.default_rng(3).normal(size=(2, SIDE, SIDE, 3)).astype(np.float32)


def _features(workdir):
    module, variables = ssl_jax.load_encoder(workdir)
    return np.asarray(module.apply(variables, _images(), train=False))


def _relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def _config(name, **overrides):
    """The smoke preset (its data are local); the file decides the backbone."""
    return load_config(name, "smoke", input__image_size=SIDE, **overrides)


def _simclr_variables(backbone):
    """SimCLR v2's pretrained model: ResNet, 3-layer projection head, linear classifier."""
    head = google_nets.simclr_head(np.random.default_rng(0), [FEATURES, FEATURES, FEATURES, 128])
    variables = {
        **{f"resnet_model/{k}": v for k, v in google_nets.simclr_paths(backbone).items()},
        **{f"_projection_head/{k}": v for k, v in head.items()},
        "supervised_head/linear_layer/dense/kernel": np.zeros((FEATURES, 10), np.float32),
        "supervised_head/linear_layer/dense/bias": np.zeros(10, np.float32),
    }
    return variables, head


@pytest.mark.slow
def test_a_simclr_v2_saved_model_imports_with_its_head(tmp_path):
    backbone = _resnet50(0)
    variables, head = _simclr_variables(backbone)
    path = google_nets.write_simclr(variables, str(tmp_path / "saved_model"))
    config = _config(
        "simclr",
        model__head__num_layers=3,
        model__head__hidden_dim=FEATURES,
        model__head__out_dim=128,
    )
    workdir = str(tmp_path / "run")

    record = importer.import_checkpoint(path, "simclr", config, workdir)

    saved = pretrained.source_config(workdir)
    assert saved["model"]["padding"] == "same_pool"
    assert saved["input"]["mean"] == [0.0, 0.0, 0.0] and saved["input"]["std"] == [1.0] * 3
    want = google_nets.resnet_features(backbone, _images(), padding="simclr")
    assert _relative(_features(workdir), want) < RTOL
    trees, _ = pretrained.read_latest(workdir, ["params"], ["batch_stats"])
    params, stats = trees["params"]["head"], trees["batch_stats"]["head"]
    for j in range(3):
        tf_layer = f"linear_layers/{j}"
        np.testing.assert_array_equal(
            params[f"dense{j}"]["kernel"], head[f"{tf_layer}/dense/kernel"]
        )
        np.testing.assert_array_equal(
            params[f"bn{j}"]["scale"], head[f"{tf_layer}/bn_relu/bn/gamma"]
        )
        np.testing.assert_array_equal(
            stats[f"bn{j}"]["var"], head[f"{tf_layer}/bn_relu/bn/moving_variance"]
        )
    assert "bias" not in params["bn2"]  # the last BN is center=False, as ssl_jax's
    assert "online head" in record["from_the_file"]
    assert any("supervised_head" in item for item in record["not_imported"])
    assert json.load(open(os.path.join(workdir, importer.IMPORT_RECORD))) == record
    with pytest.raises(ValueError, match="padded as TensorFlow's 'same_pool'"):
        export.export_torch(workdir, "torchvision", str(tmp_path / "r50.safetensors"))


@pytest.mark.slow
def test_a_simclr_run_directory_reads_as_its_saved_model(tmp_path):
    """A run's ``ckpt-N`` (model, optimizer slots, global step) names every variable by
    the same path as the SavedModel, whose trainable ones TF keys by list position."""
    variables, _ = _simclr_variables(_resnet50(0))
    saved = tf_checkpoint.read(google_nets.write_simclr(variables, str(tmp_path / "sm")))
    run = tf_checkpoint.read(google_nets.write_simclr(variables, str(tmp_path / "run"), "run"))
    model = {k: v for k, v in run.items() if k.startswith("model/")}
    assert sorted(model) == sorted(saved) == sorted(f"model/{k}" for k in variables)
    for key, value in saved.items():
        np.testing.assert_array_equal(model[key], value, err_msg=key)
    assert any(k.startswith("optimizer/") for k in run)
    release = google_releases.read_simclr(run)
    assert any("optimizer" in item for item in release.left_out)
    assert sorted(release.online) == ["backbone", "head"]


@pytest.mark.slow
def test_a_byol_pickle_imports_online_and_target_networks(tmp_path):
    rng = np.random.default_rng(1)
    online_backbone, target_backbone = _resnet50(0), _resnet50(1)
    online = google_nets.haiku_resnet(online_backbone)
    target = google_nets.haiku_resnet(target_backbone)
    for name, tree in (("projector", online), ("predictor", online), ("projector", target)):
        params, state = google_nets.haiku_mlp(
            rng, name, FEATURES if name == "projector" else 64, 128, 64
        )
        tree[0].update(params)
        tree[1].update(state)
    online[0]["classifier"] = {
        "w": np.zeros((FEATURES, 10), np.float32),
        "b": np.zeros(10, np.float32),
    }
    path = google_nets.write_byol(str(tmp_path / "pretrain.pkl"), online, target)
    config = _config(
        "byol",
        model__head__hidden_dim=128,
        model__head__out_dim=64,
        model__predictor__hidden_dim=128,
        model__predictor__out_dim=64,
    )
    workdir = str(tmp_path / "run")

    record = importer.import_checkpoint(path, "byol", config, workdir)

    assert pretrained.source_config(workdir)["model"]["padding"] == "same"
    want = google_nets.resnet_features(online_backbone, _images(), padding="same")
    assert _relative(_features(workdir), want) < RTOL
    trees, _ = pretrained.read_latest(
        workdir, ["params", "extra"], ["batch_stats", "extra/target_batch_stats"]
    )
    head, head_stats = trees["params"]["head"], trees["batch_stats"]["head"]
    linear = online[0]["projector/~/linear"]
    np.testing.assert_array_equal(head["dense0"]["kernel"], linear["w"])
    mean = online[1]["projector/~/batch_norm/~/mean_ema"]["average"].reshape(-1)
    # The hidden Linear's bias, followed by BN, folded into the running mean.
    np.testing.assert_allclose(head_stats["bn0"]["mean"], mean - linear["b"], rtol=1e-6)
    predictor = trees["params"]["predictor"]["dense1"]["kernel"]
    np.testing.assert_array_equal(predictor, online[0]["predictor/~/linear_1"]["w"])
    target_conv = trees["extra"]["target_params"]["backbone"]["conv1"]["kernel"]
    np.testing.assert_array_equal(target_conv, target[0]["res_net50/~/initial_conv"]["w"])
    assert {
        "online backbone",
        "online head",
        "online predictor",
        "target backbone",
        "target head",
    } <= set(record["from_the_file"])
    assert any("classifier" in item for item in record["not_imported"])
    assert any("optimizer" in item for item in record["not_imported"])


class _Payload:
    def __reduce__(self):
        return os.system, ("echo owned",)


def test_a_pickle_naming_anything_else_is_refused_by_name(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"experiment_state": _Payload()}, protocol=2))
    with pytest.raises(TensorFileError, match=r"evil.pkl: .*refused global (posix|os)\.system"):
        restricted_pickle.read(str(path))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"step": np.arange(100)}, protocol=2)[:-20])
    with pytest.raises(TensorFileError, match="truncated.pkl: not a readable pickle"):
        restricted_pickle.read(str(truncated))


def test_layouts_ssl_jax_cannot_build_are_named():
    sk = {
        "model/resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/3/"
        "conv2d_fixed_padding/conv2d/kernel": np.zeros((3, 3, 4, 4), np.float32)
    }
    with pytest.raises(LayoutError, match="selective-kernel"):
        google_releases.read_simclr(sk)
    with pytest.raises(LayoutError, match="no 'resnet_model/' variables"):
        google_releases.read_simclr({"encoder/conv/kernel": np.zeros(1)})
    with pytest.raises(LayoutError, match="no 'experiment_state'"):
        google_releases.read_byol({"params": {}})


def test_a_directory_without_a_tensorflow_checkpoint_is_one_message(tmp_path):
    with pytest.raises(TensorFileError, match="no TensorFlow checkpoint"):
        importer.import_checkpoint(
            str(tmp_path), "simclr", _config("simclr"), str(tmp_path / "run")
        )
    assert not (tmp_path / "run").exists()
