"""`ssl-jax import` of each official release format, built here with the releases' nesting
and key prefixes around small networks of the official layouts (``torch_nets``), and what
an imported workdir can do: eval, continued pretraining, export and re-import."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import torch  # the README's test command installs it (requirements-torch.txt)
import torch_nets
from helpers import finished_smoke_run, load_config, run_ssl_jax  # noqa: E402

from ssl_jax import config_base, export, losses, methods, pretrained, train  # noqa: E402
from ssl_jax.models import mae as mae_model  # noqa: E402
from ssl_jax.models.vit import sincos_pos_embed  # noqa: E402
from ssl_jax.weights import importer, tensor_files  # noqa: E402

SIDE = 16  # the smoke presets' image size
RTOL = 1e-4


def _sd(module, prefix=""):
    return {prefix + k: v for k, v in module.state_dict().items()}


def _vit(pos_embed=None, seed=0):
    net = torch_nets.randomise(torch_nets.VisionTransformer(32, 2, 2, 4, SIDE), seed)
    if pos_embed is not None:
        net.pos_embed.data = torch.from_numpy(pos_embed[None])
    return net


def _heads(config, in_dim):
    """The release's own head builders, sized to ``config``'s smoke preset."""
    h, p = config.model.head, config.model.get("predictor")
    if config.method == "moco":
        return {"head": torch_nets.moco_v2_fc(in_dim, h.hidden_dim, h.out_dim)}
    if config.method == "moco_v3":
        return {
            "head": torch_nets.moco_v3_mlp(h.num_layers, in_dim, h.hidden_dim, h.out_dim),
            "predictor": torch_nets.moco_v3_mlp(
                p.num_layers, h.out_dim, p.hidden_dim, p.out_dim, p.last_bn != "none"
            ),
        }
    if config.method == "simsiam":
        return {
            "head": torch_nets.simsiam_projector(in_dim, h.hidden_dim, h.out_dim),
            "predictor": torch_nets.simsiam_predictor(h.out_dim, p.hidden_dim),
        }
    if config.method == "dino":
        head = torch_nets.DINOHead(
            in_dim, h.out_dim, h.num_layers, h.hidden_dim, config.dino.bottleneck_dim
        )
        return {"head": head}
    return {}


def _networks(config, backbone, seed):
    """A randomised backbone and the config's heads, randomised from ``seed``."""
    heads = _heads(config, 128 if hasattr(backbone, "fc") else 32)
    for i, net in enumerate(heads.values()):
        torch_nets.randomise(net, seed + 1 + i)
    return {"backbone": backbone, **heads}


def _release(fmt, config):
    """``(file contents, online networks, target networks, other arrays)``."""
    if config.model.backbone.startswith("resnet"):
        make_backbone = lambda seed: torch_nets.randomise(torch_nets.resnet_tiny(), seed)  # noqa: E731
    else:
        table = sincos_pos_embed(32, 4, 4) if fmt == "moco_v3" else None
        make_backbone = lambda seed: _vit(table, seed)  # noqa: E731
    online = _networks(config, make_backbone(0), 0)
    target = _networks(config, make_backbone(10), 10)
    if fmt == "moco":
        queue = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
        state = {
            **_sd(online["backbone"], "module.encoder_q."),
            **_sd(online["head"], "module.encoder_q.fc."),
            **_sd(target["backbone"], "module.encoder_k."),
            **_sd(target["head"], "module.encoder_k.fc."),
            "module.queue": torch.from_numpy(queue),
            "module.queue_ptr": torch.tensor([5]),
        }
        contents = {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {}}
        return contents, online, target, {"queue": queue.T, "queue_ptr": 5}
    if fmt == "moco_v3":
        head = "fc." if hasattr(online["backbone"], "fc") else "head."
        state = {
            **_sd(online["backbone"], "module.base_encoder."),
            **_sd(online["head"], "module.base_encoder." + head),
            **_sd(online["predictor"], "module.predictor."),
            **_sd(target["backbone"], "module.momentum_encoder."),
            **_sd(target["head"], "module.momentum_encoder." + head),
        }
        target.pop("predictor")
        return {"epoch": 300, "arch": "vit_small", "state_dict": state}, online, target, {}
    if fmt == "simsiam":
        state = {
            **_sd(online["backbone"], "module.encoder."),
            **_sd(online["head"], "module.encoder.fc."),
            **_sd(online["predictor"], "module.predictor."),
        }
        return {"epoch": 100, "arch": "resnet50", "state_dict": state}, online, None, {}
    if fmt == "dino":
        center = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
        contents = {
            "student": {
                **_sd(online["backbone"], "module.backbone."),
                **_sd(online["head"], "module.head."),
            },
            "teacher": {**_sd(target["backbone"], "backbone."), **_sd(target["head"], "head.")},
            "epoch": 100,
            "args": __import__("argparse").Namespace(arch="vit_small", patch_size=16),
            "dino_loss": {"center": torch.from_numpy(center)},
        }
        return contents, online, target, {"center": center[0]}
    if fmt == "mae":  # a full checkpoint (mae_visualize_vit_*.pth): encoder and decoder
        m = config.mae
        net = torch_nets.MaskedAutoencoder(
            32, 2, 2, 4, SIDE, m.decoder_width, m.decoder_depth, m.decoder_heads
        )
        torch_nets.randomise(net)
        for name in ("pos_embed", "decoder_pos_embed"):  # fixed tables, not random
            getattr(net, name).data = torch.from_numpy(
                torch_nets.mae_sincos_table(getattr(net, name).shape[-1], SIDE // 4)
            )[None]
        return {"model": _sd(net)}, {"backbone": net}, None, {}
    raise AssertionError(fmt)


CASES = [
    # (format, config file, preset)
    ("moco", "moco_v2", "smoke"),
    ("moco_v3", "moco_v3", "smoke"),
    ("moco_v3", "moco_v3", "smoke_vit"),
    ("simsiam", "simsiam", "smoke"),
    ("dino", "dino", "smoke_vit"),
    ("mae", "mae", "smoke"),
]


def _torch_out(net, x):
    with torch.no_grad():
        return net(x).numpy()


def _check_network(model, trees, where, nets, images):
    """Backbone features and head outputs of the imported tree equal the PyTorch nets'."""
    params_at, stats_at = where
    params, stats = trees[params_at], trees[stats_at] or {}
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    feats = _torch_out(nets["backbone"], x)
    variables = {"params": params["backbone"], "batch_stats": stats.get("backbone", {})}
    got = model.backbone.apply(variables, images, train=False)
    assert float(np.abs(got - feats).max() / np.abs(feats).max()) < RTOL
    for name in ("head", "predictor"):
        if name not in nets:
            continue
        inputs = feats if name == "head" else _torch_out(nets["head"], torch.from_numpy(feats))
        want = _torch_out(nets[name], torch.from_numpy(inputs))
        module = getattr(model, name)
        got = module.apply(
            {"params": params[name], "batch_stats": stats.get(name, {})}, inputs, train=False
        )
        assert float(np.abs(got - want).max() / np.abs(want).max()) < RTOL, name


@pytest.mark.slow
@pytest.mark.parametrize("fmt, config_name, preset", CASES)
def test_a_release_imports_with_every_network_it_holds(fmt, config_name, preset, tmp_path):
    config = load_config(config_name, preset)
    contents, online, target, arrays = _release(fmt, config)
    path = str(tmp_path / f"{fmt}.pth.tar")
    torch.save(contents, path)
    workdir = str(tmp_path / "run")

    record = importer.import_checkpoint(path, fmt, config, workdir)

    saved = ml_collections.ConfigDict(pretrained.source_config(workdir))
    trees, step = pretrained.read_latest(
        workdir, ["params", "extra"], ["batch_stats", "extra/target_batch_stats"]
    )
    assert step == 0
    images = np.random.default_rng(2).normal(size=(4, SIDE, SIDE, 3)).astype(np.float32)
    model = methods.get_method(saved.method).make_model(saved)
    _check_network(model, trees, ("params", "batch_stats"), online, images)
    if "target_params" in trees["extra"]:
        extra = {"t": trees["extra"]["target_params"], "s": trees["extra/target_batch_stats"]}
        # A release without a momentum network: the target starts as the online one.
        _check_network(model, extra, ("t", "s"), target or online, images)
    for name, want in arrays.items():
        np.testing.assert_allclose(trees["extra"][name], want, err_msg=name)
    assert json.load(open(os.path.join(workdir, importer.IMPORT_RECORD))) == record
    assert record["fresh_init"] == []
    if fmt == "mae":
        assert saved.model.vit.pos_embed == "sincos_mae"  # recognised: fixed, not learned
        assert "decoder" in record["from_the_file"]
    if preset == "smoke_vit" and fmt == "moco_v3":
        assert saved.model.vit.pos_embed == "sincos"


@pytest.mark.slow
def test_an_imported_mae_checkpoint_gives_the_pytorch_loss_for_the_same_noise(tmp_path):
    """MAE's full forward (encoder on the visible patches, decoder, norm-pix loss) from an
    imported full checkpoint against models_mae.py's forward with the same mask noise; the
    encoder-only release (mae_pretrain_vit_*.pth) imports with a fresh decoder."""
    config = load_config("mae")
    contents, online, *_ = _release("mae", config)
    path = str(tmp_path / "mae_visualize_vit_micro.pth")
    torch.save(contents, path)
    importer.import_checkpoint(path, "mae", config, str(tmp_path / "full"))
    saved = ml_collections.ConfigDict(pretrained.source_config(str(tmp_path / "full")))
    trees, _ = pretrained.read_latest(str(tmp_path / "full"), ["params"])
    rng = np.random.default_rng(5)
    images = rng.normal(size=(3, SIDE, SIDE, 3)).astype(np.float32)
    noise = rng.uniform(size=(3, (SIDE // 4) ** 2)).astype(np.float32)
    with torch.no_grad():
        want = float(
            online["backbone"].loss(
                torch.from_numpy(images).permute(0, 3, 1, 2),
                torch.from_numpy(noise),
                config.mae.mask_ratio,
            )
        )
    model = methods.get_method("mae").make_model(saved)
    out = model.apply({"params": trees["params"]}, images, train=False, noise=noise)
    target = losses.normalize_patches(mae_model.patchify(images, 4))
    got = float(losses.masked_patch_mse(out["pred"], target, out["mask"]))
    assert abs(got - want) < RTOL * abs(want)

    encoder_only = {"model": {k: v for k, v in contents["model"].items() if "decoder" not in k}}
    del encoder_only["model"]["mask_token"]
    torch.save(encoder_only, path)
    record = importer.import_checkpoint(path, "mae", config, str(tmp_path / "encoder"))
    assert record["from_the_file"] == ["online backbone"]
    assert record["fresh_init"] == ["decoder"]


def test_a_backbone_into_another_method_and_a_dino_backbone_file(tmp_path):
    """A DINO backbone-only file (the released ``dino_*_pretrain.pth``) imports into DINO as
    both student and teacher, and into any other method as its backbone, the rest fresh."""
    backbone = _vit(None)
    path = str(tmp_path / "dino_deitmicro_pretrain.pth")
    torch.save(backbone.state_dict(), path)
    images = np.random.default_rng(3).normal(size=(2, SIDE, SIDE, 3)).astype(np.float32)
    want = _torch_out(backbone, torch.from_numpy(images).permute(0, 3, 1, 2))
    config = load_config("simclr", "smoke", model__backbone="vit_micro", model__vit__patch_size=4)
    record = importer.import_checkpoint(path, "dino", config, str(tmp_path / "simclr"))
    assert record["from_the_file"] == ["online backbone"]
    assert record["fresh_init"] == ["online head"]
    got = ssl_jax_embed(str(tmp_path / "simclr"), images)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def ssl_jax_embed(source, images):
    import ssl_jax

    return ssl_jax.embed(source, images)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return finished_smoke_run(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_an_export_loads_strictly_into_pytorch_and_reimports_with_the_same_knn(
    digits_run, suffix, tmp_path
):
    config, workdir = digits_run
    out = export.export_torch(workdir, "torchvision", str(tmp_path / f"r{suffix}"))
    contents, header = tensor_files.read(out)
    if suffix == ".pth":
        header, contents = contents["ssl_jax"], contents["state_dict"]
    recorded = {k: json.loads(v) if suffix == ".safetensors" else v for k, v in header.items()}
    assert recorded["image_size"] == config.input.image_size
    assert recorded["mean"] == list(config.input.mean) and recorded["backbone"] == "resnet_tiny"
    net = torch_nets.resnet_tiny()
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in contents.items()}
    net.load_state_dict(tensors, strict=True)
    images = np.random.default_rng(4).integers(0, 256, size=(5, SIDE, SIDE, 3), dtype=np.uint8)
    mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
    normalised = ((images / 255.0 - mean) / std).astype(np.float32)
    want = _torch_out(net.eval(), torch.from_numpy(normalised).permute(0, 3, 1, 2))
    got = ssl_jax_embed(out, images)  # uint8: normalised with the mean/std the file records
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())

    reimported = str(tmp_path / "reimported")
    importer.import_checkpoint(out, "torchvision", config, reimported)
    scores = {}
    for name, directory in (("run", workdir), ("reimported", reimported)):
        setup, state = train.restore_state(config, directory)
        with jax.set_mesh(setup.mesh):
            scores[name] = setup.evaluator(config).knn(state)["knn_top1"]
    assert scores["run"] == scores["reimported"]  # (the online probe is not exported)


@pytest.mark.slow
def test_a_full_checkpoint_continues_pretraining(tmp_path):
    config = load_config(
        "dino", "smoke_vit", schedule__total_steps=2, evals__at_end=False, evals__knn_every_steps=0
    )
    contents, *_ = _release("dino", config)
    path = str(tmp_path / "dino_full_checkpoint.pth")
    torch.save(contents, path)
    workdir = str(tmp_path / "run")
    record = importer.import_checkpoint(path, "dino", config, workdir)
    imported, _ = pretrained.read_latest(workdir, ["extra/target_params/backbone"])
    resumed = _apply(config, record["config_overrides"])
    train.pretrain(resumed, workdir)  # from step 0 of the imported state
    trained, step = pretrained.read_latest(workdir, ["extra/target_params/backbone"])
    assert step == 2
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()),
        imported["extra/target_params/backbone"],
        trained["extra/target_params/backbone"],
    )
    # The teacher moved from the imported weights by an EMA step, not from a fresh init.
    assert 0 < max(jax.tree.leaves(moved)) < 0.1


def _apply(config, overrides):
    """``config`` with the ``--config.key=value`` flags ``ssl-jax import`` printed."""
    values = dict(flag[len("--config.") :].split("=", 1) for flag in overrides)
    return config_base.with_values(config, {k: _typed(config, k, v) for k, v in values.items()})


def _typed(config, dotted, text):
    node = config
    for key in dotted.split("."):
        node = node[key]
    return type(node)(text)


def _files_under(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.mark.parametrize(
    "case, fmt, expected",
    [
        ("dino file as moco", "moco", "is not a 'moco' checkpoint: no state dict: .* 'student'"),
        ("truncated", "torchvision", "not a PyTorch checkpoint that torch.load"),
        ("unknown layout", "timm", "neither a torchvision ResNet"),
        ("head too small", "moco_v3", "the online head does not fit: wrong shape: 0.weight"),
        ("pickled object", "torchvision", "weights_only"),
        ("not a tensor file", "dino", "unknown file type"),
    ],
)
def test_bad_files_are_one_message_naming_the_file_and_nothing_is_written(
    case, fmt, expected, tmp_path
):
    config = load_config("moco_v3", "smoke")
    path = str(tmp_path / "release.pth")
    if case == "dino file as moco":
        torch.save(_release("dino", load_config("dino", "smoke_vit"))[0], path)
    elif case == "truncated":
        torch.save(torch_nets.resnet_tiny().state_dict(), path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case == "unknown layout":
        torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    elif case == "head too small":
        contents, *_ = _release("moco_v3", config)
        config = load_config("moco_v3", "smoke", model__head__hidden_dim=48)
        torch.save(contents, path)
    elif case == "pickled object":
        torch.save({"state_dict": torch_nets.resnet_tiny()}, path)  # a whole nn.Module
    else:
        path = str(tmp_path / "release.npy")
        np.save(path, np.zeros(3))
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=expected) as raised:
        importer.import_checkpoint(path, fmt, config, workdir)
    assert path in str(raised.value) and "\n" not in str(raised.value)
    assert _files_under(workdir) == []


def test_the_import_command_reports_what_it_loaded_and_refuses_a_used_workdir(tmp_path):
    contents, *_ = _release("simsiam", load_config("simsiam"))
    path = str(tmp_path / "checkpoint_0099.pth.tar")
    torch.save(contents, path)
    workdir = str(tmp_path / "run")
    done = run_ssl_jax(
        "import",
        f"--from={path}",
        "--format=simsiam",
        "--config=simsiam:smoke",  # a shipped config by name, outside the checkout
        f"--workdir={workdir}",
        cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "from the file: online backbone, online head, online predictor" in done.stdout
    before = sorted(os.listdir(workdir))
    # ssl-jax maps this ValueError to one line and exit status 2, as every bad input.
    with pytest.raises(ValueError, match="already holds a run; import into a new --workdir"):
        importer.import_checkpoint(path, "simsiam", load_config("simsiam"), workdir)
    assert sorted(os.listdir(workdir)) == before
