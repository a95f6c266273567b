"""The generator closer to real photos (issue 13): sizes and fields of view, camera paths, clutter,
exposure drift, photo textures from a root's train split only; and training on real + synthetic mixed."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from diff3r_cli.data.mixed import MixedDataset
from diff3r_cli.data.synth import CLASSIC, SynthConfig, frame_size, generate_dataset, make_example, random_scene, render_frame
from diff3r_cli.data.synth import photos
from diff3r_cli.scene_io.re10k import cameras_to_rows, decode_jpeg, encode_jpeg, example_to_cameras, read_chunk, write_chunk

NEW = SynthConfig()


# ----------------------------------------------------------------------------- generator

def test_classic_config_is_the_default_of_random_scene_and_unchanged():
    """random_scene without a config draws the rooms of before issue 13 (values recorded from that code)."""
    sc = random_scene(3, 8, 24, 20)
    assert sc.meta["path"] == "classic" and sc.exposure is None
    assert all(t.image is None for t in sc.textures)
    assert (len(sc.spheres), len(sc.boxes), len(sc.cylinders)) == (1, 2, 3)
    assert math.isclose(float(sc.K[0, 0, 0]), 16.178712, rel_tol=1e-6)
    c7 = torch.linalg.inv(sc.w2c[7])[:3, 3]
    assert torch.allclose(c7, torch.tensor([0.870241, 1.724025, 0.161548], dtype=torch.float64), atol=1e-6)


def test_frame_sizes_orientations_and_field_of_view():
    sizes = [frame_size(s, 96, NEW) for s in range(60)]
    assert all(min(w, h) == 96 and max(w, h) % 8 == 0 for w, h in sizes)
    assert {round(max(w, h) / 96, 2) for w, h in sizes} <= {1.33, 1.5, 1.75}
    portrait = sum(h > w for w, h in sizes)
    assert 8 <= portrait <= 30  # both orientations, portrait ~30%
    fovs = []
    for s in range(30):
        w, h = sizes[s]
        sc = random_scene(s, 3, w, h, NEW)
        fovs.append(math.degrees(2 * math.atan(w / 2 / float(sc.K[0, 0, 0]))))
        assert float(sc.K[0, 0, 2]) == w / 2 and float(sc.K[0, 1, 2]) == h / 2
    assert 35 <= min(fovs) and max(fovs) <= 100 and max(fovs) - min(fovs) > 40
    assert all(frame_size(s, 96, CLASSIC) == (96, 96) for s in range(10))
    for s in range(5):
        sc = random_scene(s, 3, 32, 32)
        assert 55 <= math.degrees(2 * math.atan(16 / float(sc.K[0, 0, 0]))) <= 75


def _centres_forward(sc):
    c2w = torch.linalg.inv(sc.w2c)
    return c2w[:, :3, 3], c2w[:, :3, 2]


def test_camera_paths_like_the_real_corpus():
    """Every kind is drawn; an orbit circles its object looking at it, a walk moves forward, an aerial
    camera flies high, looks down and moves sideways."""
    seen = Counter()
    for seed in range(40):
        sc = random_scene(seed, 12, 16, 12, NEW)
        kind = sc.meta["path"]
        seen[kind] += 1
        c, fwd = _centres_forward(sc)
        disp = c[-1] - c[0]
        fwd_h = torch.nn.functional.normalize(fwd[:, [0, 2]].mean(0), dim=0)
        if kind == "orbit":
            x, z, _ = sc.meta["anchor"]
            to_obj = torch.tensor([x, z], dtype=torch.float64) - c[:, [0, 2]]
            assert ((to_obj.norm(dim=1) > 1.2) & (to_obj.norm(dim=1) < 2.8)).all()
            cos = (torch.nn.functional.normalize(to_obj, dim=1)
                   * torch.nn.functional.normalize(fwd[:, [0, 2]], dim=1)).sum(1)
            assert (cos > math.cos(math.radians(10))).all()
        elif kind == "walk":
            assert float(disp[[0, 2]] @ fwd_h) > 0.8 * float(disp.norm()) and float(disp.norm()) > 1.0
        elif kind == "aerial":
            assert (c[:, 1] > 3.0).all() and (fwd[:, 1] < -0.4).all()  # world y is up: looking down
            assert abs(float(disp[[0, 2]] @ fwd_h)) < 0.6 * float(disp.norm())
    assert set(seen) == {"classic", "walk", "orbit", "aerial"}, seen


def test_more_clutter_occluders_and_thin_objects():
    def count(sc):
        return len(sc.spheres) + len(sc.boxes) + len(sc.cylinders)

    classic = [count(random_scene(s, 8, 16, 16)) for s in range(12)]
    new = [random_scene(s, 8, 16, 16, replace(NEW, paths=(("classic", 1.0),))) for s in range(12)]
    assert sum(map(count, new)) / 12 >= sum(classic) / 12 + 4
    assert any((sc.cylinders[:, 2] < 0.07).any() for sc in new)  # poles and table legs
    assert any((sc.boxes[:, [4, 5]].min(dim=1).values < 0.04).any() for sc in new)  # table tops, panels
    near = 0  # objects closer to the path than the classic 0.9 m clearance
    for sc in new:
        c, _ = _centres_forward(sc)
        for cl in sc.cylinders:
            near += int((c[:, [0, 2]] - cl[:2]).norm(dim=1).min() < cl[2] + 0.9)
    assert near > 0


def test_exposure_drifts_a_little_within_a_clip():
    sc = random_scene(2, 10, 20, 16, NEW)
    gain, gamma = sc.exposure[:, 0], sc.exposure[:, 1]
    assert ((gain > 0.8) & (gain < 1.25)).all() and ((gamma > 0.9) & (gamma < 1.1)).all()
    assert float(gain.max() - gain.min()) > 0.01
    rgb = render_frame(sc, 9, 1)[0]
    flat = render_frame(replace(sc, exposure=None), 9, 1)[0]
    assert torch.allclose(rgb, (flat * gain[9]).clamp(0, 1) ** gamma[9], atol=1e-6)
    assert random_scene(2, 10, 20, 16, replace(NEW, exposure=0.0)).exposure is None


def _fake_real_root(root, colour_train, colour_test, size=(40, 30), frames=3, examples=1):
    """An RE10K-format root whose train frames are one flat colour and test frames another."""
    w, h = size
    sc = random_scene(1, frames, w, h)
    for split, colour in (("train", colour_train), ("test", colour_test)):
        img = encode_jpeg(torch.tensor(colour).expand(h, w, 3).clone())
        exs = [{"key": f"{split}{i}", "url": "x", "timestamps": torch.arange(frames),
                "cameras": cameras_to_rows(sc.K, sc.w2c, w, h), "images": [img] * frames} for i in range(examples)]
        (root / split).mkdir(parents=True)
        write_chunk(root / split / "000000.torch", exs)
        (root / split / "index.json").write_text(json.dumps({e["key"]: "000000.torch" for e in exs}))
    return root


@pytest.fixture
def fresh_banks(monkeypatch):
    monkeypatch.setattr(photos, "_BANKS", {})


def test_photo_textures_come_from_the_train_split_only(tmp_path, monkeypatch, fresh_banks):
    root = _fake_real_root(tmp_path / "real", (0.1, 0.8, 0.1), (0.9, 0.1, 0.9))
    (root / "test" / "000001.torch").write_bytes(b"garbage")  # reading test/ would fail loudly ...
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: opened.append(str(f)) or real_load(f, *a, **k))
    cfg = replace(NEW, texture_root=root, photo_fraction=1.0, exposure=0.0)
    sc = random_scene(4, 3, 24, 18, cfg)
    assert all(t.image is not None for t in sc.textures)
    rgb = render_frame(sc, 1, 2)[0].reshape(-1, 3)
    assert opened and all("/train/" in p for p in opened), opened  # ... and is never done
    green = (rgb[:, 1] > rgb[:, 0]) & (rgb[:, 1] > rgb[:, 2])
    assert float(green.double().mean()) > 0.95  # every surface shows the (shaded) train photo's colour
    # a patch is a pure function of the seed: the same scene again gives the same pixels
    assert torch.equal(render_frame(random_scene(4, 3, 24, 18, cfg), 1, 2)[0].reshape(-1, 3), rgb)
    assert generate_dataset(tmp_path / "ds", 1, frames=2, resolution=16, spp=1, config=cfg)["texture_photos"] == 3


def test_absent_texture_root_means_procedural_textures(tmp_path, fresh_banks):
    cfg = replace(NEW, texture_root=tmp_path / "missing")
    with pytest.warns(UserWarning, match="procedural textures only"):
        sc = random_scene(5, 3, 16, 12, cfg)
    assert all(t.image is None for t in sc.textures)
    plain = random_scene(5, 3, 16, 12, replace(NEW, texture_root=None))
    assert torch.equal(render_frame(sc, 0, 1)[0], render_frame(plain, 0, 1)[0])


def test_default_generator_writes_native_aspect_chunks(tmp_path):
    generate_dataset(tmp_path, 4, frames=3, resolution=16, spp=1, chunk_size=4)
    examples = read_chunk(tmp_path / "train" / "0000000.torch")
    for ex in examples:
        seed = int(ex["key"][len("synth"):])
        w, h = frame_size(seed, 16, NEW)
        assert decode_jpeg(ex["images"][0]).shape == (h, w, 3) and ex["depths"][0].shape == (h, w)
        assert torch.allclose(example_to_cameras(ex, w, h).K, random_scene(seed, 3, w, h, NEW).K, rtol=1e-6)
    assert len({decode_jpeg(ex["images"][0]).shape for ex in examples}) > 1
    assert make_example(0, 2, 16, spp=1, config=CLASSIC)["cameras"].shape == (2, 18)


# ----------------------------------------------------------------------------- real + synthetic mixed

class _Fake:
    """A dataset of ``n`` examples named ``name``; order depends on the epoch (like RE10KDataset)."""

    def __init__(self, name, n):
        self.name, self.n, self.epoch, self.root = name, n, 0, name

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch)
        return iter({"key": f"{self.name}{i}", "epoch": self.epoch} for i in torch.randperm(self.n, generator=g).tolist())


def test_mixed_dataset_proportions_passes_and_determinism():
    mixed = MixedDataset([lambda: _Fake("r", 10), lambda: _Fake("s", 200)], [0.3, 0.7], seed=1)
    a = [s["key"] for s in mixed]
    share = sum(k.startswith("r") for k in a) / len(a)
    assert abs(share - 0.3) < 0.08
    assert {f"s{i}" for i in range(200)} <= set(a)  # the large source is seen once per epoch ...
    assert sum(k.startswith("r") for k in a) > 30    # ... the small one again and again
    assert [s["key"] for s in mixed] == a            # a pure function of (seed, epoch)
    mixed.set_epoch(1)
    assert [s["key"] for s in mixed] != a
    only = MixedDataset([lambda: _Fake("r", 5), lambda: _Fake("s", 5)], [1.0, 0.0])
    assert {s["key"][0] for s in only} == {"r"}


@pytest.fixture(scope="module")
def mix_roots(tmp_path_factory):
    """A 'real' root (classic rooms at 4:3, keys real*, no depth maps) and a synthetic one (new rooms)."""
    base = tmp_path_factory.mktemp("mix")
    real = base / "real"
    (real / "train").mkdir(parents=True)
    cfg = replace(CLASSIC, aspects=(4 / 3,))
    exs = []
    for seed in range(3):
        ex = make_example(seed, 6, 16, spp=1, config=cfg, save_depth=False)
        exs.append({**ex, "key": f"real{seed}"})
    write_chunk(real / "train" / "000000.torch", exs)
    synth = base / "synth"
    generate_dataset(synth, 4, frames=6, resolution=16, spp=1, chunk_size=2)
    return real, synth


def test_mixed_stream_draws_both_kinds_in_proportion(mix_roots):
    from diff3r_cli.train.config import TrainConfig
    from diff3r_cli.train.data import dataset_factory
    from diff3r_cli.train.distributed import Dist
    from diff3r_cli.train.stream import DataStream

    real, synth = mix_roots
    cfg = TrainConfig.from_options(data="mix", data_root=real, synthetic_root=synth, real_fraction=0.25,
                                   resolution=16, min_gap=2, max_gap=4, target_views=1).with_defaults_resolved()
    assert cfg.data.view_sampler is None  # angle on the real part, gap on the synthetic part
    stream = DataStream(dataset_factory(cfg.data, real, 0, Dist()), 2)
    keys = [k for _ in range(30) for k in stream.next_batch()["key"]]
    share = sum(k.startswith("real") for k in keys) / len(keys)
    assert abs(share - 0.25) < 0.12, share


def test_mixed_training_resumes_exactly_and_keeps_its_mix(mix_roots, tmp_path):
    from diff3r_cli.train import TrainConfig
    from test_train import COMMON, _weights, train_main_

    real, synth = mix_roots
    mix = dict(data="mix", data_root=real, synthetic_root=synth, real_fraction=0.5, steps=6)
    train_main_(**mix, out=tmp_path / "a", ckpt_every=100)
    train_main_(**mix, out=tmp_path / "b", stop_after=3)
    train_main_(**{**mix, "real_fraction": 0.9}, out=tmp_path / "b", resume=True)  # the saved mix wins
    wa, wb = _weights(tmp_path / "a" / "model.safetensors"), _weights(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["data"] == "mix" and saved["real_fraction"] == 0.5 and saved["synthetic_root"] == str(synth)
    r = TrainConfig.from_options(**{**COMMON, "data": "re10k", "synthetic_root": "/moved"}).resumed(saved)
    assert (r.data.kind, r.data.real_fraction, r.data.synthetic_root) == ("mix", 0.5, "/moved")


def test_mix_without_synthetic_root_generates_one_into_the_run(tmp_path):
    from diff3r_cli.train import TrainConfig

    cfg = TrainConfig.from_options(data="mix", out=tmp_path / "run").with_defaults_resolved()
    assert cfg.data.synthetic_root == tmp_path / "run" / "synthetic_data"
