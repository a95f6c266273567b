"""`diff3r eval`: options -> diff3r_cli.evaluate.evaluate_main (which prints its summary table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diff3r_cli.cli.checks import check_output_file, parse_int_list, require_exists
from diff3r_cli.cli.guard import guarded
from diff3r_cli.cli.options import Compensation, Confidence, DataKind, Device, Optimizer
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, require_head


@guarded
def eval_cmd(
    data_root: Annotated[Path, typer.Option(help="Dataset root with a test/ split (RE10K layout).",
                                            show_default=False)],
    data: Annotated[DataKind, typer.Option(help="Dataset kind (re10k or synthetic).")] = DataKind.re10k,
    model: Annotated[Optional[str], typer.Option(help="Diff3R model (bundled name or checkpoint). "
                                                      "Default: the bundled default.")] = None,
    ff_model: Annotated[Optional[str], typer.Option(help="Feed-forward baseline model to compare against "
                                                         "(bundled name or checkpoint). Default: the bundled "
                                                         "ff-real when present; '' for none.")] = None,
    tto_steps: Annotated[str, typer.Option(help="Comma-separated TTO step counts to evaluate.")] = "0,50,200",
    outliers: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability that a test scene's context "
                                                                   "views get occluders / exposure changes "
                                                                   "(robustness evaluation; targets stay clean).")] = 0.0,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate at most this many test scenes.")] = None,
    resolution: Annotated[Optional[int], typer.Option(min=16, help="Short side; each scene keeps its aspect "
                                                                   "ratio. Default: the model's training resolution.")] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="TTO optimizer.")] = Optimizer.adam,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.auto,
    sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Correct each prediction's depth by "
                                                               "photometric matching between the context views, "
                                                               "as reconstruct does.")] = True,
    backdrop: Annotated[bool, typer.Option("--backdrop/--no-backdrop", help="With --sweep: a far, blurred "
                                                                     "backdrop behind the scene fills what "
                                                                     "no Gaussian covers, as reconstruct "
                                                                     "does.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results (summary and "
                                                                    "per-scene rows) to this JSON file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the outlier draws (same seed, same corruptions).")] = 0,
    compensate: Annotated[Compensation, typer.Option(help="Per-view exposure/white-balance compensation in "
                                                          "TTO: auto = where the context views differ in "
                                                          "exposure.")] = Compensation.auto,
    confidence: Annotated[Confidence, typer.Option(help="Which TTO runs weight each context pixel by how far "
                                                       "the other context views confirm it (an occluder in "
                                                       "one photo gets a low weight): unc = the "
                                                       "uncertainty-anchored runs.")] = Confidence.unc,
    drop_contradicted: Annotated[bool, typer.Option("--drop-contradicted/--keep-contradicted",
                                                    help="With --confidence: those runs also start without "
                                                         "the Gaussians predicted from contradicted pixels.")] = False,
    anchor_head: Annotated[str, typer.Option("--anchor-head", help="With --confidence: the learned ranking of "
                                             "the anchor across Gaussians in those runs (a bundled name or a "
                                             ".safetensors); none = Λ as predicted.")] = DEFAULT_HEAD,
) -> None:
    """Evaluate PSNR/SSIM on held-out target views, after 0..K test-time optimization steps.

    Compares ff (feed-forward baseline), ff+TTO, diff3r, diff3r+TTO with uncertainty and without, on the fixed views of <data-root>/evaluation_index.json; prints a table.
    """
    from diff3r_cli.evaluate import evaluate_main

    require_exists(data_root, "data root")
    steps = parse_int_list(tto_steps, "--tto-steps")
    if json_out is not None:
        check_output_file(json_out)
    require_head(anchor_head)
    result = evaluate_main(data_root=data_root, data=data.value, model=model, ff_model=ff_model, tto_steps=steps,
                           outliers=outliers, limit=limit, device=device.value, resolution=resolution,
                           optimizer=optimizer.value, json_out=json_out, seed=seed,
                           compensation=compensate.value, sweep=sweep, backdrop=backdrop,
                           confidence=confidence.value, drop=drop_contradicted, anchor_head=anchor_head)
    if isinstance(result, dict) and "summary" in result:  # the library returns; the CLI presents
        from diff3r_cli.evaluate.report import print_summary

        print_summary(result)


__all__ = ["eval_cmd"]
