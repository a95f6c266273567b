"""Data-parallel training with 2 CPU processes (gloo): parameters stay identical across ranks.

The processes are started the way torchrun starts them (RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT in the environment), so train_main's environment detection is what
is being tested.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from diff3r_cli.train import steps, train_main
    from diff3r_cli.train.stream import DataStream

    root, out, dump = sys.argv[1], sys.argv[2], sys.argv[3]
    seen, initial = [], {}
    real_next, real_step = DataStream.next_batch, steps.train_step

    def next_batch(self):
        b = real_next(self)
        seen.extend(b["key"])
        return b

    def train_step(model, *a, **k):
        if not initial:  # the weights every rank starts from (after rank 0's broadcast)
            initial.update({n: v.detach().clone().contiguous() for n, v in model.state_dict().items()})
        return real_step(model, *a, **k)

    DataStream.next_batch = next_batch
    steps.train_step = train_step
    tiny = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_heads=2)
    r = train_main(data="synthetic", stage="ff", batch=1, data_root=root, resolution=16, steps=3, out=out,
                   progress=False, log_every=1, min_gap=2, max_gap=4, target_views=1, model_overrides=tiny,
                   threads=1, lr=1e-2, warmup=1, device="cpu", return_model=True)
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous() for k, v in r["model"].state_dict().items()}, dump)
    save_file(initial, dump + ".initial")
    with open(dump + ".json", "w") as f:
        json.dump({"rank": r["rank"], "world": r["world_size"], "keys": seen, "step": r["step"]}, f)
""")


REPO = str(Path(__file__).resolve().parents[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from diff3r_cli.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_ddp")
    generate_dataset(root, scenes=4, frames=6, resolution=16, spp=1, split="train", chunk_size=2)
    return root


def test_two_process_gloo_training_keeps_ranks_identical(synth_root, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        # the worker script lives in tmp_path: put this checkout first so it trains the code under test
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(synth_root), str(tmp_path / "run"),
                                       str(tmp_path / f"rank{rank}.safetensors")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, e))
    for rc, err in outs:
        assert rc == 0, err[-3000:]
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # both ranks started from the same weights, and training moved them: with lr 1e-2 (warm-up 1)
    # Adam moves an entry with a gradient by about lr per step. Measured after 3 steps: largest
    # change 0.026, 59 % of the floating-point entries (buffers included) moved by more than 1e-3.
    i0 = load_file(str(tmp_path / "rank0.safetensors.initial"))
    i1 = load_file(str(tmp_path / "rank1.safetensors.initial"))
    assert i0.keys() == w0.keys()
    for k in i0:
        assert torch.equal(i0[k], i1[k]), k
    floats = [k for k in w0 if w0[k].is_floating_point()]
    delta = torch.cat([(w0[k] - i0[k]).reshape(-1) for k in floats])
    assert float(delta.abs().max()) > 1e-2, float(delta.abs().max())
    assert float((delta.abs() > 1e-3).float().mean()) > 0.3, float((delta.abs() > 1e-3).float().mean())
    info = [json.loads((tmp_path / f"rank{r}.safetensors.json").read_text()) for r in range(2)]
    assert [i["rank"] for i in info] == [0, 1] and all(i["world"] == 2 and i["step"] == 3 for i in info)
    # each rank trained on its own shard of the data: in the first epoch (2 chunks of 2
    # scenes, one chunk per rank) the two ranks never see the same scene
    assert set(info[0]["keys"][:2]).isdisjoint(info[1]["keys"][:2])
    # only rank 0 wrote the run directory's checkpoint and log
    run = tmp_path / "run"
    assert (run / "latest.json").exists() and (run / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    ck = torch.load(run / "ckpt-0000003.pt", weights_only=False)
    assert len(ck["streams"]) == 2
