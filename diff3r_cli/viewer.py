"""`diff3r view scene.ply`: an interactive viewer in the browser, built on viser.

Shows the splats (viser's WebGL Gaussian-splat renderer), the input cameras as frustums with
their images (from the sidecar, when there is one), a control to colour the Gaussians by
their predicted uncertainty Λ of one parameter group, and a button that saves the current
view as a PNG next to the .ply. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import GROUPS, SH_C0

RGB_MODE = "photo colours"
MAX_FRUSTUM_IMAGE = 256  # long side of the images shown in the frustums (keeps the page light)


def splat_arrays(g) -> dict[str, np.ndarray]:
    """Gaussians -> viser's splat inputs: centers (N,3), covariances (N,3,3), rgbs (N,3), opacities (N,1).

    Σ = R S² Rᵀ from the normalised quaternion and exp(log-scales); colour from the SH DC term
    only (viser renders view-independent colour); opacity = sigmoid(logit).
    """
    from diff3r_cli.geometry import quat_to_rotmat

    with torch.no_grad():
        q = g.quats.detach().to(torch.float64)
        R = quat_to_rotmat(q)  # normalises
        s = torch.exp(g.log_scales.detach().to(torch.float64))
        cov = (R * (s * s)[:, None, :]) @ R.transpose(1, 2)
        rgb = (0.5 + SH_C0 * g.sh[:, 0, :].detach().to(torch.float64)).clamp(0, 1)
        op = torch.sigmoid(g.opacity_logits.detach().to(torch.float64))[:, None]
    return {"centers": g.means.detach().to(torch.float32).numpy(), "covariances": cov.to(torch.float32).numpy(),
            "rgbs": rgb.to(torch.float32).numpy(), "opacities": op.to(torch.float32).numpy()}


def capture_blur(centers: np.ndarray, cam_centers: np.ndarray, focal_px: float) -> np.ndarray:
    """(N,3,3) isotropic covariance to add so each Gaussian is drawn at least as large as our
    rasterizer draws it in the input views: its 2D covariance gets +0.3 px² there (the EWA
    low-pass), i.e. σ² = 0.3·(d/f)² in the world at distance d from the nearest input camera.

    Pixel-aligned Gaussians are about one input pixel wide; in a browser window several times
    larger than the input images (and in viser's renderer, which has no such low-pass) they
    would otherwise shrink to specks and surfaces would look like holes.
    """
    d = np.min(np.linalg.norm(centers[:, None, :] - cam_centers[None, :, :], axis=2), axis=1)
    var = 0.3 * (d / max(focal_px, 1e-9)) ** 2
    return var[:, None, None] * np.eye(3, dtype=np.float32)[None]


def display_scale(covariances: np.ndarray, target_sigma: float = 0.1) -> float:
    """World scale factor for the browser: viser sends covariances as float16, whose normal range
    starts at 6e-5, so pixel-sized Gaussians of a metre-scale scene (σ ≈ 3 mm, σ² ≈ 1e-5) would
    underflow to flat, invisible splats. Scaling the whole display (splats and cameras) so the
    median Gaussian has σ ≈ target_sigma keeps every covariance representable."""
    ev = np.linalg.eigvalsh(covariances.astype(np.float64))  # ascending per Gaussian
    med = float(np.median(np.sqrt(np.clip(ev[:, -1], 0, None))))
    return target_sigma / med if med > 0 and np.isfinite(med) else 1.0


def uncertainty_colours(lam_group: np.ndarray) -> np.ndarray:
    """Λ of one group (N,) -> RGB (N,3): log λ between its 2nd and 98th percentiles on a
    blue (low λ: free to move in TTO) -> yellow (high λ: anchored to the prediction) ramp."""
    x = np.log(np.maximum(lam_group.astype(np.float64), 1e-12))
    lo, hi = np.percentile(x, [2, 98])
    t = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    stops = np.array([[0.27, 0.00, 0.33], [0.13, 0.56, 0.55], [0.99, 0.91, 0.14]])  # viridis end points
    seg = np.minimum((t * 2).astype(int), 1)
    f = (t * 2 - seg)[:, None]
    return ((1 - f) * stops[seg] + f * stops[seg + 1]).astype(np.float32)


def _c2w_wxyz(c2w: np.ndarray) -> np.ndarray:
    """Rotation part of a camera-to-world matrix as a w,x,y,z quaternion."""
    from diff3r_cli.geometry import rotmat_to_quat

    return rotmat_to_quat(torch.from_numpy(c2w[:3, :3]).to(torch.float64)).numpy()


def _frustum_image(path: Path) -> Optional[np.ndarray]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((MAX_FRUSTUM_IMAGE, MAX_FRUSTUM_IMAGE))
            return np.asarray(im)
    except OSError:
        return None  # a missing image only loses the picture in the frustum, not the viewer


def load_view_scene(ply: Path) -> dict:
    """Everything the viewer shows: splat arrays, Λ (or None), and the input cameras with image paths."""
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import cameras_from_sidecar, read_sidecar, sidecar_path

    g, lam = read_ply(ply)
    if g.num == 0:
        raise UserError("the .ply holds no Gaussians", ply, "pass a non-empty splat")
    cams, images, context = None, [], []
    if sidecar_path(ply).exists():
        doc = read_sidecar(ply)
        cams = cameras_from_sidecar(doc, sidecar_path(ply))
        context = list(doc.get("context_views") or [])
        originals = [Path(p) for p in doc.get("images") or []]
        saved = [Path(p) if Path(p).is_absolute() else ply.parent / p for p in doc.get("context_images") or []]
        # the exact network inputs for context views, the original photos for the rest
        images = list(originals) + [None] * max(0, len(cams) - len(originals))
        for k, i in enumerate(context):
            if k < len(saved) and saved[k].is_file() and i < len(images):
                images[i] = saved[k]
    return {"splats": splat_arrays(g), "lam": None if lam is None else lam.numpy(), "cameras": cams,
            "images": images, "context": context}


def _display_splats(data: dict) -> tuple[dict, float]:
    """The splat arrays as the browser gets them: blurred to the input pixel footprint and scaled
    so float16 covariances stay representable; returns (arrays, display scale)."""
    sp = dict(data["splats"])
    cams = data["cameras"]
    if cams is not None and len(cams):
        ctx = data["context"] or list(range(len(cams)))
        cc = cams.c2w.to(torch.float64).numpy()[ctx, :3, 3]
        sp["covariances"] = (sp["covariances"] + capture_blur(sp["centers"], cc, float(cams.K[ctx, 0, 0].mean())))
        sp["covariances"] = sp["covariances"].astype(np.float32)
    k = display_scale(sp["covariances"])
    sp["centers"] = sp["centers"] * k
    sp["covariances"] = sp["covariances"] * (k * k)
    return sp, k


def _place_initial_camera(server, data: dict, sp: dict, k: float) -> None:
    """Start a little behind the context cameras, looking where they look: splats and frustums in view."""
    cams = data["cameras"]
    if cams is None or not len(cams):
        return
    # OpenCV cameras: world "up" is the cameras' mean -y axis
    c2w = cams.c2w.to(torch.float64).numpy()
    c2w[:, :3, 3] *= k
    up = -c2w[:, :3, 1].mean(0)
    server.scene.set_up_direction(tuple(float(v) for v in up / max(np.linalg.norm(up), 1e-12)))
    ctx = data["context"] or [0]
    centre = c2w[ctx, :3, 3].mean(0)
    axis = c2w[ctx, :3, 2].mean(0)
    axis /= max(np.linalg.norm(axis), 1e-12)
    depth = float(np.median(np.linalg.norm(sp["centers"] - centre, axis=1)))
    server.initial_camera.position = tuple(float(v) for v in centre - 0.25 * depth * axis)
    server.initial_camera.look_at = tuple(float(v) for v in centre + depth * axis)
    fy = float(cams.K[ctx[0], 1, 1])
    server.initial_camera.fov = 2 * math.atan(cams.height / (2 * fy))


def _add_frustums(server, data: dict, k: float) -> list:
    """One frustum per input camera (context views orange, with their images), at the display scale k."""
    cams = data["cameras"]
    if cams is None:
        return []
    c2w = cams.c2w.to(torch.float64).numpy()
    c2w[:, :3, 3] *= k  # the same display scale as the splats
    extent = float(np.linalg.norm(c2w[:, :3, 3].max(0) - c2w[:, :3, 3].min(0))) if len(cams) > 1 else 1.0
    frustums = []
    for i in range(len(cams)):
        img_path = data["images"][i] if i < len(data["images"]) else None
        fy = float(cams.K[i, 1, 1])
        is_ctx = i in data["context"]
        frustums.append(server.scene.add_camera_frustum(
            f"/cameras/{'context' if is_ctx else 'input'}_{i:03d}", fov=2 * math.atan(cams.height / (2 * fy)),
            aspect=cams.width / cams.height, scale=max(extent, 1e-3) * 0.08,
            color=(230, 120, 20) if is_ctx else (60, 60, 60),
            image=_frustum_image(img_path) if img_path is not None else None,
            wxyz=_c2w_wxyz(c2w[i]), position=c2w[i, :3, 3]))
    return frustums


def _save_view(event, ply: Path, note) -> None:
    """The "save view" button: the browser renders the current view, saved next to the .ply."""
    client = event.client
    if client is None:
        return
    note.content = "rendering the view ..."
    try:
        img = client.get_render(height=720, width=1280, transport_format="png", timeout=60.0)
        dest = next_snapshot_path(ply)
        save_snapshot(dest, img)
    except Exception as e:  # a closed tab or a slow browser must not take the server down
        note.content = f"could not save the view: {e}"
        return
    note.content = f"saved `{dest}`"
    print(f"saved {dest}", flush=True)


def _add_gui(server, ply: Path, data: dict, sp: dict, state: dict) -> None:
    """The diff3r panel: colour by Λ of a group, show/hide the input cameras, save the view."""
    with server.gui.add_folder("diff3r"):
        server.gui.add_markdown(f"**{ply.name}**: {len(sp['centers']):,} Gaussians"
                                + ("" if data["lam"] is not None else " (no uncertainty stored)"))
        modes = [RGB_MODE] + ([f"uncertainty Λ: {g}" for g in GROUPS] if data["lam"] is not None else [])
        colour = server.gui.add_dropdown("colour by", options=tuple(modes), initial_value=RGB_MODE)
        show_cams = server.gui.add_checkbox("input cameras", initial_value=True)
        save = server.gui.add_button("save view as PNG")
        saved_note = server.gui.add_markdown("")

    @colour.on_update
    def _(_event) -> None:
        mode = colour.value
        rgbs = sp["rgbs"] if mode == RGB_MODE else uncertainty_colours(data["lam"][:, modes.index(mode) - 1])
        state["splats"].remove()
        state["splats"] = server.scene.add_gaussian_splats("/splats", centers=sp["centers"],
                                                           covariances=sp["covariances"], rgbs=rgbs,
                                                           opacities=sp["opacities"])

    @show_cams.on_update
    def _(_event) -> None:
        for f in state["frustums"]:
            f.visible = show_cams.value

    save.on_click(lambda event: _save_view(event, ply, saved_note))
    state.update(colour=colour, cameras=show_cams, save=save)


def _populate(server, ply: Path, data: dict) -> dict:
    """Add the splats, the camera frustums and the GUI (colour by Λ, save view) to a viser server.

    Returns the live handles: {"splats": current splat node, "colour": dropdown, "cameras": checkbox,
    "save": button, "frustums": [...]} (the splat node is replaced when the colouring changes)."""
    sp, k = _display_splats(data)
    _place_initial_camera(server, data, sp, k)
    state = {"splats": server.scene.add_gaussian_splats("/splats", centers=sp["centers"],
                                                        covariances=sp["covariances"], rgbs=sp["rgbs"],
                                                        opacities=sp["opacities"])}
    state["frustums"] = _add_frustums(server, data, k)
    _add_gui(server, ply, data, sp, state)
    return state


def start_viewer(ply: str | Path, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False):
    """Start a viser server showing ``ply``; returns (server, url). The caller stops it (server.stop())."""
    import viser

    ply = Path(ply)
    data = load_view_scene(ply)
    server = viser.ViserServer(host=host, port=port, label=f"diff3r: {ply.name}", verbose=verbose)
    try:
        server.diff3r_handles = _populate(server, ply, data)  # for scripts and tests: the GUI handles
    except BaseException:
        server.stop()  # its threads would otherwise keep an interrupted process alive
        raise
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{server.get_port()}"
    return server, url


def next_snapshot_path(ply: Path) -> Path:
    """<stem>_view_NNN.png next to the .ply, first free number."""
    k = 0
    while (p := ply.with_name(f"{ply.stem}_view_{k:03d}.png")).exists():
        k += 1
    return p


def save_snapshot(dest: Path, img: np.ndarray) -> None:
    """Save an RGB(A) render atomically (alpha composited over white: viewers' usual background)."""
    from PIL import Image

    from diff3r_cli.fsio import atomic_output

    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 4:
        a = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * a + 255.0 * (1 - a) + 0.5).astype(np.uint8)
    with atomic_output(dest) as f:
        Image.fromarray(arr).save(f, format="PNG")


def serve_until_interrupted(server) -> None:
    """Keep serving until Ctrl-C/SIGTERM (which the CLI reports as an interrupt), then stop the server."""
    try:
        while True:
            time.sleep(0.5)
    finally:
        server.stop()


__all__ = ["start_viewer", "serve_until_interrupted", "splat_arrays", "uncertainty_colours", "load_view_scene"]
