"""MoCo's ablation switches (issue 23): ``model.contrast`` (the paper's Figure 3: moco, end_to_end, memory_bank)
and ``model.shuffle_bn`` (its appendix ablation), each against a computation written out here."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.methods.moco import MoCoMethod, build_moco

N, T = 8, 0.2


def small_moco(**kw):
    torch.manual_seed(0)
    kw = {"dim": 16, "K": 32, "m": 0.9, "T": T, **kw}
    return build_moco("resnet18", **kw)


def images(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 32, 32, generator=g), torch.randn(N, 3, 32, 32, generator=g)


def info_nce(q, positives, negatives):
    """-log(exp(q.k+ / T) / sum over k+ and the negatives), averaged; ``negatives[i]``: query i's, [K, dim]."""
    losses = []
    for i in range(q.shape[0]):
        pos = q[i] @ positives[i] / T
        neg = negatives[i] @ q[i] / T
        losses.append(-pos + torch.log(torch.exp(pos) + torch.exp(neg).sum()))
    return torch.stack(losses).mean()


def same_gradient(a, b):
    """Equal up to float summation order (relative to the tensor's norm: BN's gradients sum over the batch)."""
    return bool((a - b).norm() <= 1e-4 * b.norm() + 1e-7)


def momentum_updated(model, m=0.9):
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for pk, pq in zip(ref.encoder_k.parameters(), ref.encoder_q.parameters()):
            pk.copy_(m * pk + (1 - m) * pq)
    return ref


# ---------------------------------------------------------------- default
def test_the_default_is_moco_with_shuffle_bn_and_equals_the_explicit_switches():
    from pretrain.config import load_config

    base = ["model.arch=resnet18", "model.dim=16", "model.queue_size=32", "model.bn_splits=2", f"model.temperature={T}",
            "train.batch_size=8",
            "data.synthetic=true", "train.device=cpu"]
    default = load_config(None, base, method="moco")
    explicit = load_config(None, base + ["model.contrast=moco", "model.shuffle_bn=true"], method="moco")
    assert default.model.contrast == "moco" and default.model.shuffle_bn is True
    im_q, im_k = images(1)
    batch = [torch.stack([im_q, im_k], dim=1)]
    results = []
    for cfg in (default, explicit):
        torch.manual_seed(0)
        model = MoCoMethod().build_model(cfg)
        ref = momentum_updated(model, m=cfg.model.momentum)
        queue = model.queue.clone()
        torch.manual_seed(5)
        loss, _ = MoCoMethod().loss(model, batch, cfg)
        results.append((loss, model.queue.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    # Written out: the key batch shuffled across the 2 BN sub-batches with the permutation the model draws.
    torch.manual_seed(5)
    perm = torch.randperm(N)
    with torch.no_grad():
        k = F.normalize(ref.encoder_k(im_k[perm]), dim=1)[torch.argsort(perm)]
        q = F.normalize(ref.encoder_q(im_q), dim=1)
    expected = info_nce(q, k, [queue.T] * N)
    assert torch.allclose(results[0][0], expected, atol=1e-5)
    assert torch.allclose(results[0][1][:, :N].T, k, atol=1e-4)


# ------------------------------------------------------------- end to end
@pytest.mark.parametrize("shuffle_bn", [True, False])
def test_end_to_end_is_infonce_over_the_batch_with_gradients_through_the_keys(shuffle_bn):
    model = small_moco(contrast="end_to_end", bn_splits=2, shuffle_bn=shuffle_bn)
    assert not hasattr(model, "encoder_k") and "queue" not in model.state_dict()
    ref = copy.deepcopy(model)
    im_q, im_k = images(2)

    torch.manual_seed(3)
    logits, labels = model(im_q, im_k)
    assert logits.shape == (N, N) and labels.tolist() == [0] * N  # 1 positive + K = batch - 1 negatives
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    def reference(detach_keys: bool):
        net = copy.deepcopy(ref)
        torch.manual_seed(3)
        perm = torch.randperm(N) if shuffle_bn else torch.arange(N)  # the model draws it the same way
        q = F.normalize(net.encoder_q(im_q), dim=1)
        k = F.normalize(net.encoder_q(im_k[perm]), dim=1)[torch.argsort(perm)]
        if detach_keys:
            k = k.detach()
        # Query i: positive k_i, negatives the other samples' keys.
        loss = info_nce(q, k, [torch.cat([k[:i], k[i + 1:]]) for i in range(N)])
        loss.backward()
        return loss, q, k, [p.grad.clone() for p in net.encoder_q.parameters()]

    ref_loss, q, k, grads_through_keys = reference(detach_keys=False)
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert torch.allclose(logits[:, 0], (q * k).sum(1).detach() / T, atol=1e-5)
    for i in range(N):
        others = torch.cat([q[i] @ k[:i].T, q[i] @ k[i + 1:].T]).detach() / T
        assert torch.allclose(logits[i, 1:].detach(), others, atol=1e-5)
    model_grads = [p.grad for p in model.encoder_q.parameters()]
    assert all(same_gradient(a, b) for a, b in zip(model_grads, grads_through_keys))
    # With the keys detached the gradients differ: the key path carries gradient.
    _, _, _, grads_keys_detached = reference(detach_keys=True)
    assert not any(same_gradient(a, b) for a, b in zip(model_grads, grads_keys_detached))


def test_end_to_end_ignores_the_queue_size():
    from pretrain.config import load_config

    cfg = load_config(None, ["model.arch=resnet18", "model.contrast=end_to_end", "model.queue_size=100",
                             "train.batch_size=8", "data.synthetic=true"], method="moco")
    model = MoCoMethod().build_model(cfg)  # 100 is no multiple of 8: only the queue needs that
    assert not any(k.startswith(("encoder_k.", "queue")) for k in model.state_dict())


# ------------------------------------------------------------ memory bank
def test_memory_bank_loss_sampling_and_update_rule():
    model = small_moco(contrast="memory_bank", K=5, bank_size=10, bn_splits=2)
    assert not hasattr(model, "encoder_k") and model.memory_bank.shape == (10, 16)
    assert torch.allclose(model.memory_bank.norm(dim=1), torch.ones(10), atol=1e-6)
    ref = copy.deepcopy(model)
    old = model.memory_bank.clone()
    im_q, im_k = images(4)
    index = torch.tensor([3, 7, 0, 9, 5, 1, 8, 2])

    torch.manual_seed(6)
    logits, labels = model(im_q, im_k, index)
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    torch.manual_seed(6)
    sampled = torch.randint(10, (5,))  # K rows drawn uniformly, the batch's negatives
    q = F.normalize(ref.encoder_q(im_q), dim=1)
    expected = info_nce(q, old[index], [old[sampled]] * N)  # positive: the bank's entry of the query's own image
    assert logits.shape == (N, 1 + 5) and labels.tolist() == [0] * N
    assert torch.allclose(logits[:, 1:].detach(), q.detach() @ old[sampled].T / T, atol=1e-5)
    assert torch.allclose(loss, expected, atol=1e-5)
    # Wu et al.'s update of the batch's rows, the others untouched; no gradient into the bank.
    rows = F.normalize(0.5 * old[index] + 0.5 * q.detach(), dim=1)
    assert torch.allclose(model.memory_bank[index], rows, atol=1e-6)
    untouched = torch.tensor([4, 6])
    assert torch.equal(model.memory_bank[untouched], old[untouched])
    assert not model.memory_bank.requires_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())


def test_memory_bank_is_sized_from_the_dataset_and_in_the_state_dict():
    from pretrain.config import load_config
    from pretrain.errors import ConfigError

    cfg = load_config(None, ["model.arch=resnet18", "model.dim=16", "model.contrast=memory_bank",
                             "model.queue_size=7", "train.batch_size=8", "data.synthetic=true"], method="moco")
    method = MoCoMethod()
    model = method.build_model(cfg)  # 7: K need not divide by the batch without a queue
    with_index = [(None, 0, i) for i in range(13)]  # (views, label, index)
    method.prepare(model, cfg, with_index)
    assert model.memory_bank.shape == (13, 16) and "memory_bank" in model.state_dict()
    assert torch.allclose(model.memory_bank.norm(dim=1), torch.ones(13), atol=1e-6)
    again = method.build_model(cfg)
    method.prepare(again, cfg, with_index)
    assert torch.equal(again.memory_bank, model.memory_bank)  # from the run's seed: the same on every process
    # A data path without the indices is refused before step 0, and the loss refuses such a batch.
    with pytest.raises(ConfigError, match="dataset index"):
        method.prepare(again, cfg, [(None, 0)] * 13)
    with pytest.raises(RuntimeError, match="dataset index"):
        method.loss(model, [torch.randn(8, 2, 3, 32, 32), torch.zeros(8)], cfg)


# -------------------------------------------------------------- shuffle BN
def test_without_shuffle_bn_the_key_encoder_sees_the_batch_in_order():
    im_q, im_k = images(7)
    # m = 0: the key encoder becomes the query encoder exactly (no rounding for 2-sample BN to amplify).
    ref = momentum_updated(small_moco(bn_splits=4, m=0.0), m=0.0)
    with torch.no_grad():
        k_in_order = F.normalize(ref.encoder_k(im_k), dim=1)  # split BN over the unshuffled key batch
    for shuffle_bn in (False, True):
        model = small_moco(bn_splits=4, m=0.0, shuffle_bn=shuffle_bn)
        torch.manual_seed(8)
        model(im_q, im_k)
        keys = model.queue[:, :N].T
        assert torch.allclose(keys, k_in_order, atol=1e-5) == (not shuffle_bn)


def _two_process_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    im_q, im_k = images(9)  # the global batch; this process takes its half
    mine = slice(rank * N // 2, (rank + 1) * N // 2)
    e2e = small_moco(contrast="end_to_end", shuffle_bn=False).eval()  # per-sample BN: comparable across splits
    logits, _ = e2e(im_q[mine], im_k[mine])
    F.cross_entropy(logits, torch.zeros(N // 2, dtype=torch.long)).backward()
    grads = [p.grad.clone() for p in e2e.encoder_q.parameters()]
    bank = small_moco(contrast="memory_bank", K=3, bank_size=12).eval()
    bank(im_q[mine], im_k[mine], torch.arange(11, 3, -1)[mine])
    torch.save({"logits": logits.detach(), "grads": grads, "bank": bank.memory_bank}, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_end_to_end_and_memory_bank_across_two_gloo_processes(tmp_path):
    """Each process's queries against the global batch's keys (the others' gathered without gradient); the
    memory bank updated with every process's features."""
    import torch.multiprocessing as mp

    mp.start_processes(_two_process_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "res")), nprocs=2,
                       start_method="spawn")
    res = [torch.load(f"{tmp_path}/res.{r}") for r in range(2)]
    im_q, im_k = images(9)
    e2e = small_moco(contrast="end_to_end", shuffle_bn=False).eval()
    q, k = F.normalize(e2e.encoder_q(im_q), dim=1), F.normalize(e2e.encoder_q(im_k), dim=1)
    for r in range(2):
        rows = range(r * N // 2, (r + 1) * N // 2)
        expected = torch.stack([torch.cat([q[i] @ k[i:i + 1].T, q[i] @ torch.cat([k[:i], k[i + 1:]]).T])
                                for i in rows]) / T
        assert torch.allclose(res[r]["logits"], expected.detach(), atol=1e-5)
        # Gradient through this process's keys only: the local loss with the other half's keys detached.
        e2e.zero_grad()
        kr = torch.cat([k[:rows[0]].detach(), k[rows[0]:rows[-1] + 1], k[rows[-1] + 1:].detach()])
        info_nce(q[rows[0]:rows[-1] + 1], kr[rows[0]:rows[-1] + 1],
                 [torch.cat([kr[:i], kr[i + 1:]]) for i in rows]).backward(retain_graph=True)
        assert all(same_gradient(a, b.grad) for a, b in zip(res[r]["grads"], e2e.encoder_q.parameters()))
    bank = small_moco(contrast="memory_bank", K=3, bank_size=12).eval()
    with torch.no_grad():
        features = F.normalize(bank.encoder_q(im_q), dim=1)
    index = torch.arange(11, 3, -1)
    expected = bank.memory_bank.clone()
    expected[index] = F.normalize(0.5 * expected[index] + 0.5 * features, dim=1)
    for r in range(2):  # every process holds the whole, identical bank
        assert torch.allclose(res[r]["bank"], expected, atol=1e-6)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("override, message", [
    ("model.contrast=simclr", "model.contrast must be one of moco, end_to_end, memory_bank"),
    ("model.queue_size=0", "model.queue_size"),
])
def test_bad_switches_are_config_errors(override, message):
    from pretrain.config import load_config
    from pretrain.errors import ConfigError

    extra = ["model.contrast=memory_bank"] if override.startswith("model.queue_size") else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.synthetic=true", *extra, override], method="moco")


# ------------------------------------------------------- through the trainer
def pretrain(tmp_path, out, contrast, *extra, resume=None):
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    overrides = ["model.arch=resnet18", f"model.contrast={contrast}", "model.queue_size=32", "model.bn_splits=2",
                 "model.aug=v2", "model.mlp=true", "model.temperature=0.2", "data.img_size=32", "data.synthetic=true",
                 "data.synthetic_images=16", "data.num_workers=0", "train.batch_size=8", "train.epochs=1",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.log_every=1",
                 f"train.output_dir={tmp_path / out}", *extra]
    trainer = Trainer(load_config(None, overrides, method="moco"), resume=resume)
    trainer.fit()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("contrast", ["end_to_end", "memory_bank"])
def test_each_contrast_pretrains_through_the_trainer(tmp_path, contrast):
    from pretrain.checkpoint import load_file

    trainer = pretrain(tmp_path, "run", contrast)
    assert trainer.step == 2
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("acc1" in r and r["loss"] > 0 for r in records)
    sd = load_file(tmp_path / "run" / "checkpoint_0000.pth.tar")["state_dict"]
    assert not any(k.startswith(("module.encoder_k.", "module.queue")) for k in sd)
    if contrast == "memory_bank":
        # One row per image; after one epoch every row has been replaced by its image's update.
        initial = F.normalize(torch.randn(16, 128, generator=torch.Generator().manual_seed(0)), dim=1)
        assert sd["module.memory_bank"].shape == (16, 128)
        assert not torch.isclose(sd["module.memory_bank"], initial, atol=1e-4).all(dim=1).any()


@pytest.mark.slow
def test_memory_bank_run_resumes_exactly(tmp_path):
    straight = pretrain(tmp_path, "a", "memory_bank")
    pretrain(tmp_path, "b", "memory_bank", "train.max_iters=1")
    resumed = pretrain(tmp_path, "b", "memory_bank", resume="auto")
    assert resumed.step == straight.step == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and "memory_bank" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[json.loads(r)["loss"] for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    assert losses[0] == losses[1]


def test_the_trainer_hands_the_memory_bank_each_samples_index():
    """The method asks for the indices (``sample_index``); the pretraining data then carries them after the
    labels, as the sampler's indices; the dali backend, which does not, is refused."""
    from pretrain.config import DataConfig, load_config
    from pretrain.data import WithIndex, build_pretrain_dataset
    from pretrain.errors import ConfigError
    from pretrain.methods import get_method
    from pretrain.transforms import moco_transform

    method = get_method("moco")
    assert method.sample_index(load_config(None, ["model.contrast=memory_bank", "data.synthetic=true"],
                                           method="moco"))
    assert not method.sample_index(load_config(None, ["data.synthetic=true"], method="moco"))
    data = WithIndex(build_pretrain_dataset(DataConfig(synthetic=True, synthetic_images=5, img_size=32),
                                            moco_transform("v2", 32)))
    assert len(data) == 5 and data.device_transform is data.dataset.device_transform
    views, label, index = data[(3, 7)]
    assert index == 3 and views.shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="data.backend=pil"):
        load_config(None, ["model.contrast=memory_bank", "data.backend=dali", "data.synthetic=true"], method="moco")
