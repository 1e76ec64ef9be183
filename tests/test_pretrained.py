"""Loading a pretrained encoder from a workdir: identical backbone params, DINO's teacher,
errors naming the path (missing workdir / checkpoint / backbone, name or shape mismatch),
the learned position embedding resized to a new grid, and one end-to-end fine-tuning run
from a pretrained workdir."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from ssl_jax import pretrained, train
from ssl_jax.checkpoint import Checkpointer
from ssl_jax.methods import supervised
from ssl_jax.models.vit import ViT
from ssl_jax.state import TrainState


@pytest.fixture(scope="module")
def target():
    """The supervised smoke model's fresh state (vit_micro/4 at 16 px + a 10-way head)."""
    config = load_config("supervised", "smoke")
    model = supervised.make_model(config)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 3)), train=False))(
        jax.random.key(0)
    )
    state = TrainState(
        jnp.zeros((), jnp.int32), variables["params"], variables.get("batch_stats", {}), {}, {}
    )
    return config, jax.device_get(state)


def _save_run(workdir, method, params, extra=None, backbone="vit_micro", step=3):
    """A run as train.pretrain leaves it: config.json and an orbax checkpoint."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"method": method, "model": {"backbone": backbone}}, f)
    state = TrainState(jnp.asarray(step, jnp.int32), params, {}, {}, extra or {})
    ckpt = Checkpointer(workdir, every_steps=1, keep=2, async_save=False)
    ckpt.save(step, state, force=True)
    ckpt.close()


def _shifted(tree, delta):
    return jax.tree.map(lambda p: np.asarray(p) + delta, tree)


def _assert_equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_backbone_params_load_identically(target, tmp_path):
    _, state = target
    source = {"backbone": _shifted(state.params["backbone"], 1.0), "decoder": {"w": np.ones(3)}}
    _save_run(str(tmp_path), "mae", source)
    backbone, stats, info = pretrained.load_backbone(str(tmp_path), state.params, {})
    _assert_equal_trees(backbone, source["backbone"])
    assert stats == {} and info["step"] == 3 and info["params"] == "params/backbone"


def test_dino_loads_the_teacher(target, tmp_path):
    _, state = target
    student = _shifted(state.params["backbone"], 1.0)
    teacher = _shifted(state.params["backbone"], 2.0)
    extra = {"target_params": {"backbone": teacher}, "target_batch_stats": {}}
    _save_run(str(tmp_path), "dino", {"backbone": student}, extra)
    backbone, _, info = pretrained.load_backbone(str(tmp_path), state.params, {})
    _assert_equal_trees(backbone, teacher)
    assert info["params"] == "extra/target_params/backbone"


def test_load_pretrained_replaces_only_the_backbone(target, tmp_path):
    config, state = target
    source = {"backbone": _shifted(state.params["backbone"], 0.5)}
    _save_run(str(tmp_path), "simclr", source)
    with config.unlocked():
        config.supervised.init_from = str(tmp_path)
    loaded = supervised.load_pretrained(state, config)
    _assert_equal_trees(loaded.params["backbone"], source["backbone"])
    _assert_equal_trees(loaded.params["head"], state.params["head"])


def test_shape_mismatch_names_the_paths_and_both_shapes(target, tmp_path):
    _, state = target
    wide = ViT(width=64, depth=2, heads=2, patch_size=4, image_size=16)
    params = wide.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)), train=False)["params"]
    _save_run(str(tmp_path), "moco_v3", {"backbone": params}, backbone="vit_wide")
    with pytest.raises(pretrained.PretrainedMismatchError) as e:
        pretrained.load_backbone(str(tmp_path), state.params, {})
    msg = str(e.value)
    assert "blocks_0/attn/proj/kernel: checkpoint (64, 64) vs model (32, 32)" in msg
    assert "model.backbone='vit_wide'" in msg


def test_missing_and_unexpected_names_are_listed(target, tmp_path):
    _, state = target
    source = dict(state.params["backbone"])
    del source["norm"]
    source["extra_layer"] = {"kernel": np.zeros((2, 2))}
    _save_run(str(tmp_path), "byol", {"backbone": source})
    with pytest.raises(pretrained.PretrainedMismatchError, match="missing in the checkpoint: "):
        pretrained.load_backbone(str(tmp_path), state.params, {})
    with pytest.raises(pretrained.PretrainedMismatchError, match="not in the model: extra_layer"):
        pretrained.load_backbone(str(tmp_path), state.params, {})


def test_missing_workdir_checkpoint_or_backbone_fail_naming_the_path(target, tmp_path):
    _, state = target
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrained.load_backbone(missing, state.params, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"method": "simclr"}))
    with pytest.raises(FileNotFoundError, match=f"no checkpoint under {empty}/checkpoints"):
        pretrained.load_backbone(str(empty), state.params, {})
    _save_run(str(tmp_path / "nobackbone"), "simclr", {"encoder": {"w": np.ones(2)}})
    with pytest.raises(KeyError, match="params/backbone"):
        pretrained.load_backbone(str(tmp_path / "nobackbone"), state.params, {})


def test_learned_pos_embed_is_resized_to_the_new_grid():
    rng = np.random.default_rng(0)
    target = {"pos_embed": np.zeros((1 + 16, 8), np.float32), "w": np.zeros((2,), np.float32)}
    source = {"pos_embed": rng.normal(size=(1 + 4, 8)).astype(np.float32), "w": np.ones(2)}
    out = pretrained.fit_to(target, source, what="test")
    assert out["pos_embed"].shape == (17, 8)
    np.testing.assert_array_equal(out["pos_embed"][0], source["pos_embed"][0])  # class row


@pytest.fixture(scope="module")
def pretrained_run(target, tmp_path_factory):
    """A tiny 'pretrained' MoCo v3 workdir (config.json + a step-4 checkpoint) holding a
    vit_micro/4 encoder; written directly, since a real pretraining run would take a
    minute on the shared CPU."""
    _, state = target
    workdir = str(tmp_path_factory.mktemp("moco_v3") / "run")
    source = {"backbone": _shifted(state.params["backbone"], 0.01), "predictor": {"w": np.ones(2)}}
    _save_run(workdir, "moco_v3", source, step=4)
    return workdir


@pytest.mark.slow
def test_finetune_smoke_from_a_pretrained_workdir(pretrained_run, tmp_path, capsys):
    config = load_config(
        "supervised",
        "smoke",
        supervised__init_from=pretrained_run,
        evals__knn_every_steps=0,
        evals__random_init_baseline=False,
    )
    report = train.pretrain(config, str(tmp_path / "finetune"))
    assert "Loaded the params/backbone encoder of 'moco_v3' at step 4" in capsys.readouterr().out
    assert report["protocol"]["top1"] == "fine-tuned classifier top-1"
    assert 0.0 <= report["pretrained"]["top1"] <= 100.0
    assert set(report["pretrained"]) == {"top1", "knn_top1", "linear_top1", "online_linear_top1"}
