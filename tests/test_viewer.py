"""`diff3r view`: the viser server serves the page and the scene data on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import numpy as np
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.sidecar import write_splat

import viser  # noqa: E402  a runtime dependency: the viewer test must run in CI, never skip


def _scene(tmp_path, n=64):
    torch.manual_seed(0)
    g = Gaussians(means=torch.randn(n, 3), log_scales=torch.full((n, 3), -3.0), quats=torch.randn(n, 4),
                  opacity_logits=torch.zeros(n), sh=torch.rand(n, 1, 3))
    lam = torch.rand(n, 5) + 0.01
    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]] * 2, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[:, 2, 3] = 4.0
    w2c[1, 0, 3] = 0.5
    from PIL import Image
    imgs = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((32, 32, 3), 100 * i, np.uint8)).save(p)
        imgs.append(p)
    ply = tmp_path / "s.ply"
    write_splat(ply, g, lam, {"images": imgs, "cameras": Cameras(K, w2c, 32, 32), "context_views": [0, 1]})
    return ply, g


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _scene_messages(url: str, want: str, timeout: float = 20.0) -> tuple[set, list, dict]:
    """Connect like the browser client does and decode viser's frames until `want` arrives."""
    import msgspec
    import websockets
    import zstandard

    types: set = set()
    buffers: list = []
    found: dict = {}
    async with websockets.connect(url.replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"],
                                  max_size=None) as ws:
        t0 = time.monotonic()
        while want not in types and time.monotonic() - t0 < timeout:
            raw = await asyncio.wait_for(ws.recv(), timeout)
            n, c = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
            inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(raw[16:16 + c], max_output_size=n))
            for m in inner["messages"]:
                types.add(m["type"])
                found.setdefault(m["type"], m)
            buffers += list(inner["binaryBufferLengths"])
    return types, buffers, found


def test_viewer_serves_page_and_scene(tmp_path):
    from diff3r_cli.viewer import start_viewer

    ply, g = _scene(tmp_path)
    port = _free_port()
    server, url = start_viewer(ply, port=port)
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert server.get_host() == "127.0.0.1"  # loopback unless --host says otherwise
        page = urllib.request.urlopen(url, timeout=20).read().decode("utf-8", "replace")
        assert "<html" in page.lower()
        types, buffers, found = asyncio.run(_scene_messages(url, "GaussianSplatsMessage"))
        assert "GaussianSplatsMessage" in types
        assert g.num * 32 in buffers  # viser packs 8 uint32 per Gaussian
        assert "CameraFrustumMessage" in types  # the input cameras from the sidecar
        assert "GuiDropdownMessage" in types and "GuiButtonMessage" in types
        dd = json.dumps(found["GuiDropdownMessage"], default=str)
        assert "uncertainty" in dd  # the Λ colouring choices are offered
    finally:
        server.stop()


def test_uncertainty_colours_order():
    from diff3r_cli.viewer import uncertainty_colours

    c = uncertainty_colours(np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0]))
    assert c.shape == (5, 3) and (c >= 0).all() and (c <= 1).all()
    # low λ dark blue/purple, high λ yellow: the red+green sum grows with λ
    s = c[:, 0] + c[:, 1]
    assert (np.diff(s) >= -1e-6).all() and s[-1] > s[0] + 0.5


def test_splat_covariance_matches_rotation_and_scale():
    from diff3r_cli.viewer import splat_arrays

    g = Gaussians(means=torch.zeros(1, 3), log_scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]])),
                  quats=torch.tensor([[2.0, 0.0, 0.0, 0.0]]),  # unnormalised identity
                  opacity_logits=torch.zeros(1), sh=torch.zeros(1, 1, 3))
    a = splat_arrays(g)
    assert np.allclose(a["covariances"][0], np.diag([1.0, 4.0, 9.0]), atol=1e-5)
    assert np.allclose(a["rgbs"][0], 0.5) and np.allclose(a["opacities"][0], 0.5)


def test_view_cli_rejects_bad_ply(tmp_path):
    from typer.testing import CliRunner

    from diff3r_cli.cli import app

    bad = tmp_path / "x.ply"
    bad.write_bytes(b"not a ply")
    res = CliRunner().invoke(app, ["view", str(bad)])
    assert res.exit_code == 2 and "x.ply" in res.output


def test_view_cli_prints_the_url_then_serves_until_interrupted(tmp_path, monkeypatch):
    """`diff3r view`: the URL line on stdout, the server stopped on Ctrl-C (exit 130, one line)."""
    from typer.testing import CliRunner

    import diff3r_cli.viewer as viewer
    from diff3r_cli.cli import app

    ply, _ = _scene(tmp_path)
    served = []

    def interrupted_at_once(server):
        served.append(server)
        server.stop()
        raise KeyboardInterrupt

    monkeypatch.setattr(viewer, "serve_until_interrupted", interrupted_at_once)
    port = _free_port()
    res = CliRunner().invoke(app, ["view", str(ply), "--port", str(port)])
    assert res.exit_code == 130, res.output
    want = f"diff3r viewer for {ply}: open http://127.0.0.1:{port} in a browser (Ctrl-C stops it)"
    assert want in res.stdout.splitlines(), res.stdout  # (viser prints its own banner too)
    assert "anyone who can reach" not in res.stdout  # the warning is for non-loopback hosts only
    assert res.stderr.strip() == "error: interrupted (SIGINT)" and len(served) == 1


def test_capture_blur_matches_input_pixel_footprint():
    from diff3r_cli.viewer import capture_blur

    centers = np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 15.0]], dtype=np.float32)
    cov = capture_blur(centers, np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 20.0]]), focal_px=100.0)
    # nearest camera at distance 5 for both: σ² = 0.3·(5/100)²
    np.testing.assert_allclose(cov[:, 0, 0], 0.3 * 0.05 ** 2, rtol=1e-6)
    np.testing.assert_allclose(cov[0], np.eye(3) * cov[0, 0, 0], atol=0)


def test_snapshot_names_and_alpha(tmp_path):
    from PIL import Image

    from diff3r_cli.viewer import next_snapshot_path, save_snapshot

    ply = tmp_path / "s.ply"
    p0 = next_snapshot_path(ply)
    assert p0.name == "s_view_000.png"
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent -> white
    save_snapshot(p0, rgba)
    assert next_snapshot_path(ply).name == "s_view_001.png"
    with Image.open(p0) as im:
        a = np.asarray(im)
    assert a.shape == (4, 6, 3) and tuple(a[0, 0]) == (255, 0, 0) and tuple(a[1, 1]) == (255, 255, 255)


def test_colour_by_uncertainty_recolours_the_splats(tmp_path):
    from diff3r_cli.viewer import start_viewer, uncertainty_colours

    ply, g = _scene(tmp_path)
    server, _ = start_viewer(ply, port=_free_port())
    try:
        h = server.diff3r_handles
        rgba = lambda: np.asarray(h["splats"].buffer).view(np.uint8).reshape(-1, 32)[:, 28:31].copy()  # noqa: E731
        photo = rgba()
        assert "uncertainty Λ: opacity" in h["colour"].options
        h["colour"].value = "uncertainty Λ: opacity"  # what a click in the browser does
        from diff3r_cli.ply import read_ply

        _, lam = read_ply(ply)
        want = (uncertainty_colours(lam[:, 3].numpy()) * 255).round()
        got = rgba().astype(np.float64)
        assert not np.array_equal(got, photo)
        assert np.abs(got - want).max() <= 1.0  # Λ of the opacity group, on the blue->yellow ramp
        h["colour"].value = "photo colours"
        assert np.array_equal(rgba(), photo)
        h["cameras"].value = False
        assert not any(f.visible for f in h["frustums"])
    finally:
        server.stop()
