"""MoCo v3 on two CPU processes (torchrun with gloo, as the docs show for trying a recipe without GPUs): its
batch norm is synchronised (``pretrain.sync_batchnorm``), where torch's SyncBatchNorm refuses to run on a CPU.

A step on two processes, each with half of a batch, must give the loss, gradients and running statistics
of one process on the whole batch: the property SyncBN exists for (per-process batch norm would not)."""
import os

import pytest
import torch
import torch.nn as nn

from conftest import REPO, free_port, run_tool
from pretrain.sync_batchnorm import AllReduceBatchNorm, convert_sync_batchnorm

TINY_V3 = ["model.arch=resnet18", "model.dim=16", "model.mlp_dim=32", "data.img_size=32", "train.device=cpu"]
MOMENTUM = 0.99


def tiny_v3(world_size: int):
    from pretrain.config import load_config
    from pretrain.methods import get_method

    cfg = load_config(None, [*TINY_V3, "data.synthetic=true"], method="mocov3")
    return get_method("mocov3").build_model(cfg, world_size)


def step(model, x1, x2):
    """One forward and backward: (loss, the gradient of every trained parameter, the BN running statistics)."""
    model.train()
    loss = model(x1, x2, MOMENTUM)
    loss.backward()
    net = getattr(model, "module", model)
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    running = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}
    return loss.detach(), grads, running


def batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def _two_process_step(rank, world, port, initial, result):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pretrain import distributed as du

    du.init_distributed("cpu", "gloo", timeout_min=3)
    model = tiny_v3(world)
    model.load_state_dict(torch.load(initial, weights_only=True))
    x1, x2 = (x.chunk(world)[rank] for x in batch())
    torch.save(step(DDP(model), x1, x2), f"{result}.{rank}")
    du.cleanup()


@pytest.mark.slow
def test_mocov3_step_on_two_cpu_processes_equals_one_process_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    single = tiny_v3(1)
    assert not any(isinstance(m, (nn.SyncBatchNorm, AllReduceBatchNorm)) for m in single.modules())
    torch.save(single.state_dict(), tmp_path / "initial.pth")
    loss, grads, running = step(single, *batch())
    mp.start_processes(_two_process_step, args=(2, free_port(), str(tmp_path / "initial.pth"), str(tmp_path / "res")),
                       nprocs=2, start_method="spawn")
    results = [torch.load(tmp_path / f"res.{rank}", weights_only=True) for rank in range(2)]
    # each process's loss is its half's queries against every key: their mean is the whole batch's
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(loss.item(), rel=1e-5)
    assert results[0][0] != pytest.approx(results[1][0].item(), rel=1e-3)  # the halves do differ
    for r_loss, r_grads, r_running in results:
        assert r_grads.keys() == grads.keys() and len(grads) > 60  # every trained tensor, a BN's among them
        for k, g in grads.items():  # DDP's mean of the processes' gradients: the whole batch's
            torch.testing.assert_close(r_grads[k], g, rtol=1e-4, atol=1e-5, msg=k)
        for k, v in running.items():  # the running statistics of the whole batch's, on both processes
            torch.testing.assert_close(r_running[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_conversion_keeps_parameters_and_buffers_and_picks_torchs_syncbn_for_gpus():
    bn = nn.BatchNorm2d(3, momentum=0.2)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.running_mean.fill_(0.5)
    cpu = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), bn), on_gpu=False)
    assert isinstance(cpu[1], AllReduceBatchNorm) and cpu[1].weight is bn.weight and cpu[1].momentum == 0.2
    assert torch.equal(cpu[1].running_mean, torch.full((3,), 0.5))
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(cpu[1](x), bn(x))  # one process: plain batch norm
    gpu = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3)), on_gpu=True)
    assert isinstance(gpu[0], nn.SyncBatchNorm)


@pytest.mark.slow
def test_mocov3_pretraining_with_torchrun_on_two_cpu_processes(tmp_path):
    """The documented command, two processes with gloo: one step and its checkpoint (SyncBatchNorm refused it)."""
    out = tmp_path / "run"
    proc = run_tool("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                    REPO / "tools" / "pretrain_net.py", "--method", "mocov3", *TINY_V3, "data.synthetic=true",
                    "data.synthetic_images=16", "data.num_workers=0", "train.batch_size=4", "train.progress=false",
                    "train.tensorboard=false", "train.export_backbone=false", "--output-dir", out, "--max-iters", "1",
                    env={"OMP_NUM_THREADS": "1"})
    assert (out / "checkpoint_last.pth.tar").is_file(), proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint_last.pth.tar", weights_only=True)
    assert ckpt["trainer"]["world_size"] == 2 and ckpt["trainer"]["step"] == 1
