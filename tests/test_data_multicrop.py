"""Multi-crop (DINO): global and local views, their recipes, seeds, resume and sharding."""

import itertools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import config_base, parallel
from ssl_jax.data import pipeline, recipes
from ssl_jax.data import views as views_lib

GLOBAL, LOCAL = 16, 8  # the digits-sized multi-crop: 16 px global, 8 px local views


def _npz(tmp_path, images: np.ndarray) -> str:
    path = tmp_path / f"images{len(images)}.npz"
    np.savez(path, images=images, labels=np.arange(len(images)))
    return f"npz:{path}"


def _input_cfg(dataset: str, views: dict, batch: int = 8) -> ml_collections.ConfigDict:
    # mean 0, std 1: batches hold the augmented pixels on the 0..1 scale, easy to reason on.
    return ml_collections.ConfigDict(
        dict(
            dataset=dataset,
            data_dir=None,
            train_split="train",
            image_size=GLOBAL,
            global_batch_size=batch,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            views=views,
            shuffle_buffer=64,
            prefetch=2,
        )
    )


def _dino_views(num_local: int) -> ml_collections.ConfigDict:
    config = config_base.base_config()
    config.input.image_size = GLOBAL
    config_base.set_multicrop(
        config,
        [recipes.recipe("dino_global1"), recipes.recipe("dino_global2")],
        recipes.recipe("dino_local"),
        num_local=num_local,
        local_size=LOCAL,
    )
    return config.input.views


def _take(iterator, k: int) -> list[dict]:
    return list(itertools.islice(iterator, k))


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """DINO recipes (every random op on), 2 global + 2 local views of 24 random colour images:
    3 steps per epoch, 5 batches."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, [24, 12, 12, 3], dtype=np.uint8)
    cfg = _input_cfg(_npz(tmp_path_factory.mktemp("dino"), images), dict(_dino_views(2)))
    return cfg, _take(pipeline.pretrain_iterator(cfg, seed=5), 5)


def test_global_and_local_batch_shapes_and_dtypes(dino):
    _, batches = dino
    batch = batches[0]
    assert sorted(batch) == ["global_views", "index", "label", "local_views"]
    assert batch["global_views"].shape == (8, 2, GLOBAL, GLOBAL, 3)
    assert batch["local_views"].shape == (8, 2, LOCAL, LOCAL, 3)
    assert batch["global_views"].dtype == batch["local_views"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32


def test_crops_of_one_image_differ(dino):
    _, batches = dino
    for key in ("global_views", "local_views"):
        crops = batches[0][key]  # [b, n, s, s, 3]
        for i, j in itertools.combinations(range(crops.shape[1]), 2):
            differs = [not np.allclose(crops[e, i], crops[e, j]) for e in range(len(crops))]
            assert all(differs), (key, i, j)


def test_resume_is_bitwise_exact(dino):
    cfg, full = dino
    resumed = _take(pipeline.pretrain_iterator(cfg, seed=5, start_step=2), 3)  # crosses epoch
    for a, b in zip(full[2:], resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_adding_local_views_leaves_the_global_views_unchanged(dino):
    cfg, full = dino
    only_global = ml_collections.ConfigDict(cfg.to_dict())
    only_global.views = dict(_dino_views(0))
    batch = next(pipeline.pretrain_iterator(only_global, seed=5))
    assert sorted(batch) == ["index", "label", "views"]  # no local views: the plain layout
    np.testing.assert_array_equal(batch["views"], full[0]["global_views"])


def test_to_global_shards_every_leaf_of_a_multicrop_batch(dino):
    _, batches = dino
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    batch = parallel.to_global(batches[0], mesh)
    for key, value in batch.items():
        assert value.sharding.spec == P(parallel.DATA_AXIS)
        assert len(value.addressable_shards) == 8
        assert value.addressable_shards[0].data.shape[0] == 1  # 8 rows over 8 devices
        np.testing.assert_array_equal(jax.device_get(value), batches[0][key])


def _ramp(size: int = 64) -> np.ndarray:
    """Red = row, green = column, on 0..255: a crop's pixel ranges reveal its extent."""
    coords = np.round(np.arange(size) * 255 / (size - 1))
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 128)], -1).astype(np.uint8)


def _covered_area(crops: np.ndarray) -> np.ndarray:
    """``[..., s, s, 3]`` crops of the ramp -> fraction of the source image each one covers."""
    extent = crops.max(axis=(-3, -2)) - crops.min(axis=(-3, -2))  # [..., 3]
    return extent[..., 0] * extent[..., 1]


def test_local_crops_use_the_local_crop_scale(tmp_path):
    # Global crops cover 90-100% of the image, local ones 5-40%: swapping or sharing the
    # recipes between the groups moves the measured areas across the thresholds below.
    views = {
        "view1": recipes.recipe("mae", crop_scale=(0.9, 1.0)),
        "view2": recipes.recipe("mae", crop_scale=(0.9, 1.0)),
        **{
            f"view{v}": recipes.recipe("mae", crop_scale=(0.05, 0.4), size=LOCAL)
            for v in range(3, 7)
        },
    }
    cfg = _input_cfg(_npz(tmp_path, np.stack([_ramp()] * 16)), views, batch=16)
    batch = next(pipeline.pretrain_iterator(cfg, seed=0))
    global_area = _covered_area(batch["global_views"])  # [16, 2]
    local_area = _covered_area(batch["local_views"])  # [16, 4]
    # Resizing pulls the outermost pixel centres inwards, so the measured area is a bit
    # smaller than the crop's: about 0.9 for global crops, at most 0.4 for local ones.
    assert global_area.min() > 0.7, global_area.min()
    assert local_area.max() < 0.4, local_area.max()
    assert 0.05 < local_area.mean() < 0.3, local_area.mean()  # U(0.05, 0.4) area, not tiny


def test_per_view_settings_reach_their_crop(tmp_path):
    # Bright images (>= 170/255): a solarized crop is all < 0.5, an untouched one all > 0.6.
    views = {
        "view1": recipes.recipe("mae"),
        "view2": recipes.recipe("mae", solarize_p=1.0),
        "view3": recipes.recipe("mae", size=LOCAL),
        "view4": recipes.recipe("mae", size=LOCAL, solarize_p=1.0),
        "view5": recipes.recipe("mae", size=LOCAL),
    }
    rng = np.random.default_rng(1)
    images = rng.integers(170, 256, [8, 12, 12, 3], dtype=np.uint8)
    batch = next(pipeline.pretrain_iterator(_input_cfg(_npz(tmp_path, images), views), seed=0))
    for key, solarized in (("global_views", [False, True]), ("local_views", [False, True, False])):
        crops = batch[key]
        assert [bool((crops[:, i] < 0.5).all()) for i in range(crops.shape[1])] == solarized
        assert [bool((crops[:, i] > 0.6).all()) for i in range(crops.shape[1])] == [
            not s for s in solarized
        ]


def test_inconsistent_view_sizes_are_errors(tmp_path):
    mixed = dict(
        view1=recipes.recipe("mae"),
        view2=recipes.recipe("mae", size=8),
        view3=recipes.recipe("mae", size=12),
    )
    cfg = _input_cfg("digits", mixed)
    match = r"same size.*'view2': 8, 'view3': 12"
    with pytest.raises(ValueError, match=match):
        pipeline.pretrain_iterator(cfg, seed=0)  # fails when built, before any batch
    with pytest.raises(ValueError, match="no global view of input.image_size=16"):
        views_lib.split_global_local(dict(view1=recipes.recipe("mae", size=8)), GLOBAL)
    with pytest.raises(ValueError, match=r"size 32, larger than the global input.image_size=16"):
        views_lib.split_global_local(
            dict(view1=mixed["view1"], view2=recipes.recipe("mae", size=32)), GLOBAL
        )
    with pytest.raises(ValueError, match=r"input.views.view2: size=-1 must be an int >= 0"):
        views_lib.check_views_config(dict(mixed, view2=dict(recipes.recipe("mae"), size=-1)))
    with pytest.raises(ValueError, match="use make_crops"):
        views_lib.make_views(
            None, None, dict(mixed, view3=mixed["view2"]), image_size=16, mean=0, std=1
        )


def test_set_multicrop_installs_independent_global_and_local_views():
    config = config_base.base_config()
    config.input.image_size = 224  # ImageNet DINO: 2 x 224 + 8 x 96
    global1 = recipes.recipe("dino_global1")
    config_base.set_multicrop(
        config,
        [global1, recipes.recipe("dino_global2")],
        recipes.recipe("dino_local"),
        num_local=8,
        local_size=96,
    )
    views = config.input.views
    assert views_lib.view_names(views) == [f"view{i}" for i in range(1, 11)]
    assert [views[f"view{i}"].size for i in range(1, 11)] == [0, 0] + [96] * 8
    assert views_lib.split_global_local(views, 224) == (
        ["view1", "view2"],
        [f"view{i}" for i in range(3, 11)],
    )
    assert views.view2.solarize_p == 0.2 and views.view3.crop_scale == (0.05, 0.4)
    views.view3.blur_p = 0.0  # each view is its own copy
    assert views.view4.blur_p == 0.5 and global1.size == 0
    with pytest.raises(ValueError, match="local_size=224 must be in"):
        config_base.set_multicrop(config, [global1], global1, num_local=2, local_size=224)
