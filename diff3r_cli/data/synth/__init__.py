"""Synthetic RE10K-like training data from an exact ray caster (not a splatting renderer).

Each scene is an indoor-like room (an axis-aligned box seen from inside: textured walls,
floor and ceiling) holding several objects (yaw-rotated boxes, spheres, vertical capped
cylinders). Surfaces carry procedural solid textures evaluated at the 3D hit point
(multi-scale value noise, stripes, checkers, smooth gradients; random palettes), shaded
with Lambert's law under one or two point lights plus ambient. Pixels are anti-aliased
with ``spp`` jittered samples; depth is the z-depth (camera coordinates) of the sample
through the pixel centre. Camera paths mimic RE10K clips: smooth forward/sideways motion
with small rotations, inside the room and away from objects.

World frame: y up, floor at y = 0. Cameras: OpenCV (x right, y down, z forward).

Modules: ``scene`` (random scene description), ``shading`` (textures, lights), ``raycast``
(intersections, ``render_frame``), ``dataset`` (the RE10K-chunk writer ``generate_dataset``).
"""

from diff3r_cli.data.synth.dataset import evaluation_entry, generate_dataset, make_example, scene_seed
from diff3r_cli.data.synth.raycast import intersect, render_frame
from diff3r_cli.data.synth.scene import SynthScene, random_scene
from diff3r_cli.data.synth.shading import noise_lattice, value_noise

__all__ = ["generate_dataset", "random_scene", "render_frame", "intersect", "make_example", "SynthScene",
           "value_noise", "noise_lattice", "scene_seed", "evaluation_entry"]
