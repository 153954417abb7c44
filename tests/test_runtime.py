"""What every training run sets up around its loop: each process's own GPU random stream in checkpoints,
the process-group timeout, the kNN monitor shared by all processes, deterministic mode."""
import json
import os
import random
from datetime import timedelta

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port
from pretrain import distributed as du
from pretrain.config import RunConfig, load_config
from pretrain.trainer import Trainer, rng_state, set_determinism, set_rng_state, start_run


@pytest.fixture
def torch_flags(monkeypatch):
    """Put torch's process-wide algorithm flags back after the test (start_run sets them)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # monkeypatch restores it
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


# ------------------------------------------------------------------ the GPU's random stream
class FakeCuda:
    """torch.cuda's random-state functions on ``visible`` GPUs, this process on ``current``: one generator
    state per device, distinct, recording which devices were written. As in torch, a device index past the
    visible GPUs raises IndexError (``torch.cuda.default_generators[index]``)."""

    NAMES = ("is_available", "device_count", "current_device", "get_rng_state", "set_rng_state",
             "get_rng_state_all", "set_rng_state_all")

    def __init__(self, visible: int, current: int = 0, base: int = 0):
        self.states = [torch.full((8,), base + i, dtype=torch.uint8) for i in range(visible)]
        self.current, self.written = current, []

    def install(self, monkeypatch):
        for name in self.NAMES:
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def is_available(self):
        return True

    def device_count(self):
        return len(self.states)

    def current_device(self):
        return self.current

    def _index(self, device) -> int:
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        index = self._index(device)
        self.states[index] = new_state.clone()
        self.written.append(index)

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, new_states):
        for i, s in enumerate(new_states):
            self.set_rng_state(s, i)


def saved_state(monkeypatch, tmp_path, gpus: FakeCuda):
    """rng_state() on ``gpus``, through a checkpoint file (loaded as checkpoints are, weights only)."""
    gpus.install(monkeypatch)
    torch.save(rng_state(), tmp_path / "rng.pth")
    return torch.load(tmp_path / "rng.pth", weights_only=True)


def test_resume_on_fewer_gpus_restores_this_process_generator(monkeypatch, tmp_path):
    # Rank 1 of a 2-GPU node (cuda:1), resumed as rank 1 of two 1-GPU nodes (cuda:0): saving every visible
    # GPU's generator and restoring by index asked for a second GPU here (IndexError).
    state = saved_state(monkeypatch, tmp_path, FakeCuda(visible=2, current=1, base=10))
    node = FakeCuda(visible=1, current=0, base=50)
    node.install(monkeypatch)
    set_rng_state(state)
    assert node.written == [0]
    assert torch.equal(node.states[0], torch.full((8,), 11, dtype=torch.uint8))  # cuda:1's stream there


def test_resume_on_more_gpus_restores_this_process_generator(monkeypatch, tmp_path):
    # Rank 1 of two 1-GPU nodes (cuda:0), resumed as rank 1 of a 2-GPU node (cuda:1): its stream belongs in
    # cuda:1's generator, and cuda:0 (rank 0's) is not this process's to touch.
    state = saved_state(monkeypatch, tmp_path, FakeCuda(visible=1, current=0, base=10))
    node = FakeCuda(visible=2, current=1, base=50)
    node.install(monkeypatch)
    set_rng_state(state)
    assert node.written == [1]
    assert torch.equal(node.states[1], torch.full((8,), 10, dtype=torch.uint8))
    assert torch.equal(node.states[0], torch.full((8,), 50, dtype=torch.uint8))


def test_checkpoints_with_every_gpu_state_still_load(monkeypatch, caplog):
    cpu_streams = {"torch": torch.get_rng_state(), "python": random.getstate(),
                   "numpy": rng_state()["numpy"]}  # rng_state() without a GPU: the CPU streams only
    old = {**cpu_streams, "cuda": [torch.full((8,), 20 + i, dtype=torch.uint8) for i in range(2)]}
    node = FakeCuda(visible=2, current=1, base=50)
    node.install(monkeypatch)
    set_rng_state(old)
    assert node.written == [1] and torch.equal(node.states[1], old["cuda"][1])  # this device's entry

    node = FakeCuda(visible=3, current=2, base=50)
    node.install(monkeypatch)
    set_rng_state(old)
    assert node.written == []  # no entry for cuda:2: left as it is, with a warning
    assert "none for this process's cuda:2" in caplog.text


# ------------------------------------------------------------------ the process-group timeout
def record_init_process_group(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    return calls


def test_process_group_timeout_is_the_setting(monkeypatch, tmp_path, torch_flags):
    calls = record_init_process_group(monkeypatch)
    du.init_distributed("cpu", "gloo", timeout_min=45)
    assert calls[-1]["timeout"] == timedelta(minutes=45) and calls[-1]["backend"] == "gloo"
    # What every training command starts with (pretraining and the classification protocols).
    dist = start_run(RunConfig(device="cpu", output_dir=str(tmp_path), dist_timeout_min=90.0), "")[0]
    assert dist.world_size == 2
    assert calls[-1]["timeout"] == timedelta(minutes=90)
    start_run(RunConfig(device="cpu", output_dir=str(tmp_path)), "")
    assert calls[-1]["timeout"] == timedelta(minutes=30)  # the default, not NCCL's 10 minutes


# ------------------------------------------------------------------ the kNN monitor on every process
CLASS_COLOURS = [(200, 40, 40), (150, 90, 60), (40, 60, 200)]  # the first two near: some votes go wrong


def write_labelled_folders(root):
    """Solid-colour images, 3 classes: 7 train (shares of 4 and 3 on 2 processes) and 5 val images."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", (3, 2, 2)), ("val", (2, 2, 1))):
        for c, (rgb, n) in enumerate(zip(CLASS_COLOURS, per_class)):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                colour = tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-60, 60, 3), 0, 255))
                Image.new("RGB", (8, 8), colour).save(root / split / f"class{c}" / f"{i}.png")


def mean_colour(x):
    return x.mean(dim=(2, 3))  # per image: the same whatever the batch


def brute_force_top1(root, k, temperature):
    """Top-1 (%) of the weighted k-NN vote, image by image, from the images' mean colours."""
    from pretrain.data import ImageFolderDataset
    from pretrain.transforms import eval_transform

    def features(split):
        ds = ImageFolderDataset(str(root / split), eval_transform(8))
        out = []
        for i in range(len(ds)):
            img, label = ds[i]
            f = mean_colour(ds.device_transform(torch.as_tensor(img)[None], "cpu"))[0].double()
            out.append((f / f.norm(), int(label)))
        return out

    train, hits = features("train"), 0
    for f, label in features("val"):
        near = sorted(((float(f @ g), c) for g, c in train), reverse=True)[:k]
        votes = [sum(np.exp(s / temperature) for s, c in near if c == cls) for cls in range(3)]
        hits += int(np.argmax(votes) == label)
    return 100.0 * hits / 5


def _knn_worker(rank, world, port, root, result_file):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    from pretrain.knn import gather_shares, knn_evaluate

    du.init_distributed("cpu", "gloo", timeout_min=3)
    group = torch.distributed.distributed_c10d._get_default_group()
    timeout = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    seen = []

    def features(x):
        seen.append(x.shape[0])
        return mean_colour(x)

    result = knn_evaluate(features, f"{root}/train", f"{root}/val", img_size=8, batch_size=2, k=3, temperature=0.1)
    share = torch.arange(rank, 7, world)  # rows 0, 2, 4, 6 and 1, 3, 5: back in order
    order = gather_shares(share.view(-1, 1).float()).view(-1).tolist()
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump({"result": result, "order": order, "images": sum(seen), "timeout": timeout}, f)
    du.cleanup()


@pytest.mark.slow
def test_knn_monitor_on_two_processes_equals_one(tmp_path):
    import torch.multiprocessing as mp

    from pretrain.knn import knn_evaluate

    write_labelled_folders(tmp_path)
    single = knn_evaluate(mean_colour, tmp_path / "train", tmp_path / "val", img_size=8, k=3, temperature=0.1)
    assert 0 < single["top1"] < 100 and single["top1"] == pytest.approx(brute_force_top1(tmp_path, 3, 0.1))
    mp.start_processes(_knn_worker, args=(2, free_port(), str(tmp_path), str(tmp_path / "res")), nprocs=2,
                       start_method="spawn")
    res = [json.loads((tmp_path / f"res.{rank}").read_text()) for rank in range(2)]
    assert [r["images"] for r in res] == [4 + 3, 3 + 2]  # each its share of train (7) and val (5), once
    for r in res:
        assert r["result"] == single  # every process gets the whole set's accuracy
        assert r["order"] == list(range(7))
        assert r["timeout"] == 3 * 60  # the process group's own record of train.dist_timeout_min


def test_trainer_runs_the_knn_monitor(tiny_mae_overrides, tmp_path, torch_flags):
    write_labelled_folders(tmp_path / "knn")
    cfg = load_config(None, tiny_mae_overrides + ["train.epochs=1", "train.knn_every_epochs=1",
                                                  f"data.knn_train={tmp_path}/knn/train",
                                                  f"data.knn_val={tmp_path}/knn/val"])
    trainer = Trainer(cfg)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if "knn_top1" in r]
    assert len(knn) == 1 and 0 <= knn[0]["knn_top1"] <= 100


# ------------------------------------------------------------------ deterministic mode
def test_deterministic_mode_takes_effect_and_is_off_by_default(torch_flags, tmp_path):
    start_run(RunConfig(device="cpu", output_dir=str(tmp_path / "det"), deterministic=True), "")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "train.deterministic: deterministic algorithms" in (tmp_path / "det" / "log.txt").read_text()
    # The next run in the same process, by default: autotuning again, nothing left over.
    start_run(RunConfig(device="cpu", output_dir=str(tmp_path / "default")), "")
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic


def test_a_workspace_setting_of_the_user_is_kept(torch_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and torch.are_deterministic_algorithms_enabled()


def test_deterministic_resume_ends_where_an_uninterrupted_run_ends(tiny_mae_overrides, tmp_path, torch_flags):
    """The deterministic kernels run the whole loop (no op refuses) and keep the exact resume."""
    base = [o for o in tiny_mae_overrides if not o.startswith("train.output_dir")] + [
        "train.deterministic=true", "train.batch_size=4"]

    def train(out, *extra, resume=None):
        trainer = Trainer(load_config(None, base + [f"train.output_dir={tmp_path}/{out}", *extra]), resume=resume)
        trainer.fit()
        return trainer

    straight = train("a")
    train("b", "train.max_iters=3")
    resumed = train("b", resume="auto")
    assert torch.are_deterministic_algorithms_enabled()
    assert resumed.step == straight.step
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
