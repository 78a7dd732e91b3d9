"""DistributedDataParallel on the CPU: 2 gloo processes (torchrun) match 1 process at the same global batch,
whether one launcher starts both or two launchers ("nodes") meet at a c10d rendezvous.

The model must not depend on how a batch is split: BatchNorm uses its running statistics
(``train.freeze_bn=all``; SyncBatchNorm would need GPUs) and dropout is off. Both runs see the same samples in
each step (the sampler deals one permutation out to the ranks) with the same augmentation (seeded per sample
and epoch), and DDP averages the two halves' gradients into the gradient of the whole batch, so the weights
agree to float tolerance (the all-reduce adds in another order).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from engine.checkpoint import load_checkpoint
from models.classifier import ImageClassifier

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/cls_resnet10t_synthetic-shapes_32x32.yaml"
COMMON = ["data.synthetic.num_train_images=32", "data.synthetic.num_val_images=12", "data.synthetic.min_image_size=28",
          "data.synthetic.max_image_size=40", "data.input_size=[32,32]", "data.input_policy=random_crop",
          "model.drop_rate=0.0", "train.freeze_bn=all", "train.num_workers=0", "train.num_threads=1",
          "train.epochs=2", "train.warmup_steps=2", "train.ema_decay=0.9", "data.val_batch_size=4",
          "train.log_interval=1"]


def run(args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "tools.train", "--config", CONFIG, "--no-progress", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_gloo_processes_match_one(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(["--run-dir", one, "train.batch_size=8", *COMMON], nproc=1)
    proc = run(["--run-dir", two, "train.batch_size=4", *COMMON], nproc=2)     # 2 x 4 = the same global batch
    assert "rank 1 of 2" in proc.stderr and "backend gloo" in proc.stderr

    a, b = load_checkpoint(os.path.join(one, "last.pt")), load_checkpoint(os.path.join(two, "last.pt"))
    assert a["global_step"] == b["global_step"] == 8            # 32 samples / 8 per step x 2 epochs
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch.manual_seed(0)                                         # the runs' initial weights (train.seed=0)
    init = ImageClassifier("resnet10t", 8).state_dict()
    assert not torch.equal(init["net.conv1.0.weight"], a["model"]["net.conv1.0.weight"]), "training moved weights"
    moved = (a["model"]["net.fc.weight"] - init["net.fc.weight"]).abs().max()
    assert moved > 100 * (a["model"]["net.fc.weight"] - b["model"]["net.fc.weight"]).abs().max()
    for name, value in a["ema"]["model"].items():
        torch.testing.assert_close(b["ema"]["model"][name], value, rtol=1e-4, atol=1e-5, msg=f"ema {name}")
    # Validation is sharded over the ranks and its counts summed: the same numbers as one process.
    for key in ("top1", "top5", "loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-4), key
    # Only rank 0 wrote: one set of files, and the provenance says two processes took part.
    metrics = json.load(open(os.path.join(two, "metrics.json")))
    assert metrics["provenance"]["world_size"] == 2 and metrics["epochs"] == 2
    rows_one = list(csv.DictReader(open(os.path.join(one, "epochs.csv"))))
    rows_two = list(csv.DictReader(open(os.path.join(two, "epochs.csv"))))
    assert len(rows_two) == 2                                    # one row per epoch, not one per rank
    for r1, r2 in zip(rows_one, rows_two):                       # epoch loss summed over ranks
        assert float(r2["train_loss"]) == pytest.approx(float(r1["train_loss"]), rel=1e-4)
        assert int(r2["train_images"]) == int(r1["train_images"]) == 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multinode_two_launchers_match_one_process(tmp_path):
    """Two torchrun launchers with --nnodes 2 (one process each) joined by a c10d rendezvous on localhost:
    how two machines train together. The weights after training equal one process's at the same global batch."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(["--run-dir", one, "train.batch_size=8", *COMMON], nproc=1)
    # GLOO_SOCKET_IFNAME: gloo would otherwise pick the interface of the host name (on a cluster: eth0, ib0).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "GLOO_SOCKET_IFNAME": "lo"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=multinode-test",
                "--local_addr=127.0.0.1"]
    train = ["-m", "tools.train", "--config", CONFIG, "--no-progress", "--run-dir", two, "train.batch_size=4", *COMMON]
    nodes = [subprocess.Popen([*launcher, *train], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=600))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-4000:]
    logs = "".join(err for _, err in outputs)
    assert "rank 0 of 2" in logs and "rank 1 of 2" in logs and "backend gloo" in logs

    a, b = load_checkpoint(os.path.join(one, "last.pt")), load_checkpoint(os.path.join(two, "last.pt"))
    assert a["global_step"] == b["global_step"] == 8
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for key in ("top1", "loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-4), key
    assert json.load(open(os.path.join(two, "metrics.json")))["provenance"]["world_size"] == 2
