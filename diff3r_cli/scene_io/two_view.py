"""Poses from two-view geometry, for when incremental mapping cannot register a 2-3 image set.

The relative pose of the best-matched pair (baseline set to 1), further images by PnP against
the pair's triangulated matches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import torch

from diff3r_cli.errors import UserError


def triangulate_dlt(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of normalized image points (M,2) for 3x4 projections; (M,3)."""
    A = np.stack([x1[:, :1] * P1[2] - P1[0], x1[:, 1:] * P1[2] - P1[1],
                  x2[:, :1] * P2[2] - P2[0], x2[:, 1:] * P2[2] - P2[1]], axis=1)  # (M,4,4)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    return X[:, :3] / X[:, 3:4]


def _pair_key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _read_database(db_path: Path) -> tuple[dict, dict, dict, dict]:
    """Images, cameras, keypoints (id -> (K,2)) and verified matches ((a, b) with a < b -> (M,2))."""
    with pycolmap.Database.open(str(db_path)) as db:
        images = {im.image_id: im for im in db.read_all_images()}
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        kps = {i: db.read_keypoints(i)[:, :2].astype(np.float64) for i in images}
        pair_ids, geoms = db.read_two_view_geometries()
    pairs = {}
    for pid, g in zip(pair_ids, geoms):
        a, b = pycolmap.pair_id_to_image_pair(pid)  # matches' columns follow this (a, b) order
        if len(g.inlier_matches) > 0:
            pairs[_pair_key(a, b)] = np.asarray(g.inlier_matches, dtype=np.int64) if a < b else \
                np.asarray(g.inlier_matches, dtype=np.int64)[:, ::-1]
    return images, cameras, kps, pairs


def _relative_pose(ca, ka: np.ndarray, cb, kb: np.ndarray, matches: np.ndarray, names: tuple[str, str],
                   folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pose (3,4) of camera b relative to a (baseline set to 1) and the inlier matches (M,2)."""
    ka, kb = np.ascontiguousarray(ka), np.ascontiguousarray(kb)
    geom = pycolmap.estimate_calibrated_two_view_geometry(ca, ka, cb, kb,
                                                          np.ascontiguousarray(matches, dtype=np.uint32))
    ok = pycolmap.estimate_two_view_geometry_pose(ca, ka, cb, kb, geom)
    inl = np.asarray(geom.inlier_matches, dtype=np.int64)
    if not ok or len(inl) < 15:
        raise UserError(f"two-view geometry of {names[0]} and {names[1]} failed ({len(inl)} inliers)",
                        folder, "use photos with more overlap and some sideways camera motion")
    rel = np.asarray(geom.cam2_from_cam1.matrix(), dtype=np.float64)
    rel[:, 3] /= max(np.linalg.norm(rel[:, 3]), 1e-12)  # scale is unobservable: baseline := 1
    return rel, inl


def _reprojection_errors(cam, pose: np.ndarray, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
    Xc = X @ pose[:, :3].T + pose[:, 3]
    return np.linalg.norm(cam.img_from_cam(Xc, check_cheirality=False) - observed, axis=1)


def _correspondences(i: int, tracks: dict[int, dict[int, int]], pairs: dict, kps: dict, X: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """2D keypoints of image i (P,2) matched to triangulated points (P,3) through the posed pair."""
    p2d, p3d = [], []
    for other, track in tracks.items():
        mm = pairs.get(_pair_key(i, other))
        if mm is None:
            continue
        mi, mo = (mm[:, 0], mm[:, 1]) if i < other else (mm[:, 1], mm[:, 0])
        for ki, ko in zip(mi, mo):
            if int(ko) in track:
                p2d.append(kps[i][ki])
                p3d.append(X[track[int(ko)]])
    return np.array(p2d), np.array(p3d)


def two_view_poses(db_path: Path, folder: Path) -> tuple[dict, dict, float, list[str], np.ndarray]:
    """Poses from two-view geometry: ({name: w2c}, {name: camera}, mean reproj. error, dropped, points (P,3))."""
    images, cameras, kps, pairs = _read_database(db_path)
    if not pairs:
        raise UserError("no two images share enough feature matches to be posed", folder,
                        "use overlapping photos of the same static scene, or provide poses (COLMAP/transforms.json)")
    (a, b), m = max(pairs.items(), key=lambda kv: len(kv[1]))
    cam = {i: cameras[images[i].camera_id] for i in images}
    rel, inl = _relative_pose(cam[a], kps[a], cam[b], kps[b], m, (images[a].name, images[b].name), folder)
    poses = {a: np.hstack([np.eye(3), np.zeros((3, 1))]), b: rel}
    # triangulate the pair's inliers (normalized coordinates) to pose any further image by PnP
    ia, ib = inl[:, 0], inl[:, 1]  # keypoint indices in images a and b
    X = triangulate_dlt(poses[a], poses[b], cam[a].cam_from_img(kps[a][ia]), cam[b].cam_from_img(kps[b][ib]))
    # keep points in front of both cameras (mismatches can triangulate behind them)
    front = ((X[:, 2] > 0) & ((X @ rel[:, :3].T + rel[:, 3])[:, 2] > 0)) & np.isfinite(X).all(1)
    X, ia, ib = X[front], ia[front], ib[front]
    tracks = {a: {int(k): j for j, k in enumerate(ia)}, b: {int(k): j for j, k in enumerate(ib)}}
    errs = [_reprojection_errors(cam[i], poses[i], X, kps[i][kp]) for i, kp in ((a, ia), (b, ib))]
    dropped = []
    for i in images:
        if i in poses:
            continue
        p2d, p3d = _correspondences(i, tracks, pairs, kps, X)
        res = pycolmap.estimate_and_refine_absolute_pose(p2d, p3d, cam[i]) if len(p2d) >= 6 else None
        if res is None or int(np.sum(res["inlier_mask"])) < 12:
            dropped.append(images[i].name)
            continue
        poses[i] = np.asarray(res["cam_from_world"].matrix(), dtype=np.float64)
        mask = np.asarray(res["inlier_mask"], dtype=bool)
        errs.append(_reprojection_errors(cam[i], poses[i], p3d[mask], p2d[mask]))
    w2c = {images[i].name: rigid_4x4(p) for i, p in poses.items()}
    cams = {images[i].name: cam[i] for i in poses}
    return w2c, cams, float(np.concatenate(errs).mean()), dropped, X


def rigid_4x4(m: np.ndarray) -> torch.Tensor:
    """A (3,4) pose -> (4,4) float64 tensor."""
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :4] = torch.from_numpy(np.asarray(m, dtype=np.float64))
    return out


__all__ = ["two_view_poses", "rigid_4x4", "triangulate_dlt"]
