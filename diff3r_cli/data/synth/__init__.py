"""Synthetic RE10K-like training data from an exact ray caster (not a splatting renderer).

Each scene is a room (an axis-aligned box seen from inside: textured walls, floor and ceiling)
holding objects (yaw-rotated boxes, spheres, vertical capped cylinders; thin poles, tables on
legs and panels; occluders near the camera). Surfaces carry procedural solid textures evaluated at
the 3D hit point (multi-scale value noise, stripes, checkers, smooth gradients; random palettes)
or patches cut from real train-split photos, shaded with Lambert's law under one or two point
lights plus ambient. Pixels are anti-aliased with ``spp`` jittered samples; depth is the z-depth
(camera coordinates) of the sample through the pixel centre. Camera paths mimic the real corpus:
RE10K-like clips, forward walks, orbits around an object, aerial fly-bys; each clip's exposure
drifts a little. `SynthConfig` says what is drawn (`CLASSIC`: the square rooms of before).

World frame: y up, floor at y = 0. Cameras: OpenCV (x right, y down, z forward).

Modules: ``config`` (SynthConfig, frame sizes), ``scene`` (random scene description), ``paths``
(camera paths), ``clutter`` (objects), ``photos`` (photo patches), ``shading`` (textures, lights,
exposure), ``raycast`` (intersections, ``render_frame``), ``dataset`` (the RE10K-chunk writer
``generate_dataset``).
"""

from diff3r_cli.data.synth.draw import frame_size
from diff3r_cli.data.synth_config import CLASSIC, SynthConfig
from diff3r_cli.data.synth.dataset import evaluation_entry, generate_dataset, make_example, scene_seed
from diff3r_cli.data.synth.raycast import intersect, render_frame
from diff3r_cli.data.synth.scene import SynthScene, random_scene
from diff3r_cli.data.synth.shading import noise_lattice, value_noise

__all__ = ["generate_dataset", "random_scene", "render_frame", "intersect", "make_example", "SynthScene",
           "value_noise", "noise_lattice", "scene_seed", "evaluation_entry", "SynthConfig", "CLASSIC", "frame_size"]
