"""Under torch.distributed (DDP, gloo, two CPU processes): an injected NaN on rank 1 is reported by rank 0."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

STEPS, ANOMALY = 24, 15

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


class NaNOnRank1(nn.Linear):
    inject = False

    def forward(self, x):
        out = super().forward(x)
        return out + float("nan") if self.inject else out


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from flake8_amp.runtime import TrainingMonitor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), NaNOnRank1(16, 16), nn.Linear(16, 2))
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
        monitor = TrainingMonitor(model, optimizer, warmup_steps=10, alert_window=8, sample_every=1)
        generator = torch.Generator().manual_seed(rank)
        for step in range(STEPS):
            model[2].inject = rank == 1 and step == ANOMALY
            optimizer.zero_grad()
            loss = ddp(torch.randn(16, 8, generator=generator)).pow(2).mean()
            loss.backward()
            optimizer.step()
            monitor.step(loss)
        monitor.summary()
        alerts = [vars(a) for a in monitor.alerts]
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(alerts, handle)
    finally:
        dist.barrier()  # both ranks are done with the group before either tears it down
        dist.destroy_process_group()
    # The interpreter's shutdown can still meet a gloo thread ("terminate called without an active
    # exception", SIGABRT, in about one run in four here): the results are written, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rank_zero_reports_a_nan_injected_on_rank_one(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    alerts = json.loads((tmp_path / "rank0.json").read_text())
    from_rank_1 = [a for a in alerts if a["rank"] == 1 and "non-finite activation" in a["metric"]]
    assert from_rank_1, alerts
    assert from_rank_1[0]["step"] == ANOMALY and from_rank_1[0]["layer"] == "2"
    # rank 0's own activations were finite at that step; it saw the NaN only in the all-reduced gradients
    at_anomaly = [a for a in alerts if a["step"] == ANOMALY]
    assert {(a["rank"], a["metric"].split(" (")[0]) for a in at_anomaly} == {
        (1, "non-finite activation"),
        (0, "non-finite gradient"),
    }
    assert not (tmp_path / "rank1.json").read_text() == "[]"  # rank 1 judges too, but only rank 0 prints
