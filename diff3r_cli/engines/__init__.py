"""The engines behind `diff3r reconstruct`, `refine`, `render` and `inspect`: plain library
functions that take plain arguments (and an optional progress callback), return a typed
result, and never print. The CLI (diff3r_cli.cli) parses options, calls them and presents.

| module          | what                                                                        |
|-----------------|-----------------------------------------------------------------------------|
| policy          | device, working resolution, context views, depth range, unseen-view split   |
| reconstruct     | reconstruct_scene -> ReconstructResult                                      |
| refine          | refine_gaussians (TTO with best-iterate tracking), refine_splat -> RefineResult |
| render_path     | camera_path, render_splat -> RenderFolder                                   |
| outputs         | PNG/video writing, chunked rendering, the render folder (RenderFolder)      |
| splat_inputs    | context cameras and images read back from a splat's sidecar                 |
| inspect         | inspect_ply / inspect_input -> JSON-ready dicts                             |
| progress        | ProgressEvent, ProgressCallback, Reporter                                   |
"""
