import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pretrain.checkpoint import CheckpointFormatError, load_file, save_atomic
from pretrain.backbones import read_backbone
from pretrain.methods.moco import SplitBatchNorm2d, build_moco


def small_moco(**kw):
    torch.manual_seed(0)
    kw = {"dim": 16, "K": 32, "m": 0.9, "T": 0.2, **kw}
    return build_moco("resnet18", **kw)


# ------------------------------------------------------------------- queue
def test_queue_pointer_and_wraparound():
    model = small_moco(K=12)
    for step in range(4):
        keys = torch.full((4, 16), float(step + 1))
        model.dequeue_and_enqueue(keys)
        assert int(model.queue_ptr) == (4 * (step + 1)) % 12
    # After 4 steps of 4 keys in a queue of 12: columns 0-3 hold step 4 (wrapped), 4-7 step 2, 8-11 step 3.
    assert torch.all(model.queue[:, 0:4] == 4) and torch.all(model.queue[:, 4:8] == 2)
    assert torch.all(model.queue[:, 8:12] == 3)


def test_queue_size_must_be_a_multiple_of_the_batch():
    model = small_moco(K=10)
    with pytest.raises(ValueError, match="multiple of the global batch"):
        model.dequeue_and_enqueue(torch.randn(4, 16))


def test_queue_starts_normalised():
    model = small_moco()
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(32), atol=1e-5)


# ---------------------------------------------------------------- momentum
def test_momentum_update_formula():
    model = small_moco(m=0.99)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    q = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update_key_encoder()
    for kb, qq, ka in zip(k_before, q, model.encoder_k.parameters()):
        assert torch.allclose(ka, 0.99 * kb + 0.01 * qq, atol=1e-6)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())


def test_key_encoder_starts_as_a_copy_and_heads():
    v1, v2 = build_moco("resnet50", K=256), build_moco("resnet50", K=256, mlp=True)
    assert v1.encoder_q.fc.weight.shape == (128, 2048)
    assert [tuple(m.weight.shape) for m in v2.encoder_q.fc if isinstance(m, nn.Linear)] == [(2048, 2048), (128, 2048)]
    for a, b in zip(v2.encoder_q.state_dict().values(), v2.encoder_k.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="torchvision ResNet"):
        build_moco("vit_b_16")


# -------------------------------------------------------------------- loss
def test_logits_labels_and_loss_match_an_independent_computation():
    model = small_moco(bn_splits=1)
    model.train()
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    ref = copy.deepcopy(model)
    queue = ref.queue.clone()
    # Reference: update the key encoder by hand, then q, k, logits and the InfoNCE loss written out.
    with torch.no_grad():
        for pk, pq in zip(ref.encoder_k.parameters(), ref.encoder_q.parameters()):
            pk.copy_(0.9 * pk + 0.1 * pq)
        k = F.normalize(ref.encoder_k(im_k), dim=1)
    q = F.normalize(ref.encoder_q(im_q), dim=1)
    pos = torch.stack([q[i] @ k[i] for i in range(4)])
    neg = torch.stack([torch.stack([q[i] @ queue[:, j] for j in range(32)]) for i in range(4)])
    ref_loss = torch.stack([
        -(pos[i] / 0.2) + torch.logsumexp(torch.cat([pos[i:i + 1], neg[i]]) / 0.2, dim=0) for i in range(4)
    ]).mean()

    logits, labels = model(im_q, im_k)
    assert logits.shape == (4, 33) and labels.tolist() == [0, 0, 0, 0]
    assert torch.allclose(logits[:, 0], pos.detach() / 0.2, atol=1e-5)
    assert torch.allclose(F.cross_entropy(logits, labels), ref_loss, atol=1e-5)
    # The batch's keys were enqueued, in order, at the old pointer.
    assert torch.allclose(model.queue[:, :4].T, k, atol=1e-5) and int(model.queue_ptr) == 4


# ---------------------------------------------------------------- shuffle BN
def test_split_batchnorm_normalises_each_sub_batch_alone():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    split = SplitBatchNorm2d(3, num_splits=2)
    split.load_state_dict(bn.state_dict())
    x = torch.randn(8, 3, 4, 4)
    out = split(x)
    refs = [copy.deepcopy(bn) for _ in range(2)]
    for j in range(2):  # sub-batch j = samples j, j+2, j+4, j+6
        assert torch.allclose(out[j::2], refs[j](x[j::2]), atol=1e-5)
    assert torch.allclose(split.running_mean, (refs[0].running_mean + refs[1].running_mean) / 2, atol=1e-6)
    # A change to a sample of sub-batch 0 leaves sub-batch 1 untouched: no information crosses.
    x2 = x.clone()
    x2[0] += 10
    out2 = split(x2)
    assert torch.equal(out2[1::2], out[1::2]) and not torch.allclose(out2[2], out[2])
    assert set(split.state_dict()) == set(bn.state_dict())
    split.eval()
    bn.load_state_dict(split.state_dict())
    bn.eval()
    assert torch.allclose(split(x), bn(x))


def test_single_process_moco_uses_split_bn_and_shuffles_keys():
    model = small_moco(bn_splits=4)
    assert sum(isinstance(m, SplitBatchNorm2d) for m in model.encoder_k.modules()) == 20
    shuffled, undo = model._shuffle_keys(torch.arange(8.0).view(8, 1))
    assert sorted(shuffled.view(-1).tolist()) == list(range(8))
    assert torch.equal(model._unshuffle_keys(shuffled, undo).view(-1), torch.arange(8.0))


def _shuffle_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # the permutation must come from rank 0
    model = small_moco(bn_splits=1)
    local = (rank * 4 + torch.arange(4.0)).view(4, 1)
    shuffled, undo = model._shuffle_keys(local)
    restored = model._unshuffle_keys(shuffled * 10, undo)
    # Full forward under DDP-style shuffling, key encoder in eval mode (per-sample): logits must
    # equal those computed without any shuffling.
    model.eval()
    im = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        k_plain = F.normalize(model.encoder_k(im), dim=1)
        sh, un = model._shuffle_keys(im)
        k_shuffled = model._unshuffle_keys(F.normalize(model.encoder_k(sh), dim=1), un)
    torch.save({"shuffled": shuffled, "restored": restored, "k_plain": k_plain, "k_shuffled": k_shuffled},
               f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_bn_restores_order_across_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_shuffle_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "res")), nprocs=2,
                       start_method="spawn")
    res = [torch.load(f"{tmp_path}/res.{r}") for r in range(2)]
    for r in range(2):
        expected = (r * 4 + torch.arange(4.0)).view(4, 1)
        assert torch.equal(res[r]["restored"], expected * 10)  # unshuffle is exact and in order
        assert torch.allclose(res[r]["k_shuffled"], res[r]["k_plain"], atol=1e-5)
    together = torch.cat([res[0]["shuffled"], res[1]["shuffled"]]).view(-1)
    assert sorted(together.tolist()) == list(range(8))  # a permutation of the global batch ...
    assert not torch.equal(together, torch.arange(8.0))  # ... that moved samples


# ---------------------------------------------------------- checkpoints
# Every backend this machine can run: on a CPU, data.backend=dali loads with pil (the fallback, end to end).
@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=pytest.mark.slow)])
def test_authors_checkpoint_format_roundtrip_and_resume(tmp_path, backend):
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    overrides = [f"data.backend={backend}", "model.arch=resnet18", "model.queue_size=64", "model.bn_splits=2", "model.aug=v2", "model.mlp=true",
                 "model.temperature=0.2", "data.img_size=32", "data.synthetic=true", "data.synthetic_images=32", "data.num_workers=0",
                 "train.batch_size=8", "train.epochs=2", "train.device=cpu", "train.progress=false",
                 "train.tensorboard=false", "train.log_every=1", f"train.output_dir={tmp_path}/run",
                 "optim.schedule=cosine"]
    trainer = Trainer(load_config(None, overrides, method="moco"))
    trainer.fit()
    ckpt = load_file(tmp_path / "run" / "checkpoint_0001.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet18" and "optimizer" in ckpt
    sd = ckpt["state_dict"]
    assert all(k.startswith(("module.encoder_q.", "module.encoder_k.")) or k in ("module.queue", "module.queue_ptr")
               for k in sd)
    assert sd["module.queue"].shape == (128, 64) and int(sd["module.queue_ptr"]) == (8 * 8) % 64
    fresh = build_moco("resnet18", K=64, mlp=True)
    fresh.load_state_dict({k[len("module."):]: v for k, v in sd.items()}, strict=True)
    import json

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all("acc1" in r for r in records)
    # An authors'-format file (no trainer state) resumes at its 'epoch'.
    authors = {k: ckpt[k] for k in ("epoch", "arch", "state_dict", "optimizer")}
    save_atomic(authors, tmp_path / "moco_v2_200ep_pretrain.pth.tar")
    resumed = Trainer(load_config(None, overrides[:-2] + [f"train.output_dir={tmp_path}/r2", "train.epochs=3"],
                                  method="moco"), resume=str(tmp_path / "moco_v2_200ep_pretrain.pth.tar"))
    assert resumed.epoch == 2 and resumed.iter == 0
    assert torch.equal(resumed.model.queue, sd["module.queue"])


@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=pytest.mark.slow)])
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, backend):
    """MoCo v2 (crops, jitter, grayscale, blur, queue, shuffled keys): interrupted mid-epoch and resumed,
    it ends bit for bit where a straight run ends (2 steps: the second runs after the resume)."""
    import json

    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    def train(out, *extra, resume=None):
        overrides = [f"data.backend={backend}", "model.arch=resnet18", "model.queue_size=32", "model.bn_splits=2",
                     "model.aug=v2", "model.mlp=true", "data.img_size=32", "data.synthetic=true",
                     "data.synthetic_images=16", "data.num_workers=0", "train.batch_size=8", "train.epochs=1",
                     "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.log_every=1",
                     f"train.output_dir={tmp_path / out}", *extra]
        trainer = Trainer(load_config(None, overrides, method="moco"), resume=resume)
        trainer.fit()
        return trainer

    straight = train("a")
    train("b", "train.max_iters=1")
    resumed = train("b", resume="auto")
    assert resumed.step == straight.step == 2
    for (k, x), (_, y) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), k
    losses = [[json.loads(r)["loss"] for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    assert losses[0] == losses[1]


def test_queue_must_divide_by_global_batch_at_start():
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    cfg = load_config(None, ["model.arch=resnet18", "model.queue_size=100", "train.batch_size=8", "train.device=cpu",
                             "data.synthetic=true", "data.synthetic_images=16", "train.output_dir=/tmp/unused"], method="moco")
    with pytest.raises(ValueError, match="multiple of the global batch"):
        Trainer(cfg)


def test_query_backbone_exports_strictly_into_torchvision(tmp_path):
    from pretrain.methods.moco import resnet_features

    model = build_moco("resnet50", K=256, mlp=True)
    path = save_atomic({"epoch": 200, "arch": "resnet50", "state_dict":
                        {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "moco.pth.tar")
    sd = read_backbone(str(path)).state_dict
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    net.load_state_dict(sd, strict=True)
    net.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(net(x), resnet_features(model.encoder_q, x), atol=1e-5)
    # A supervised torchvision checkpoint passes through (fc dropped); a ViT is refused.
    assert set(read_backbone(torchvision.models.resnet18().state_dict()).state_dict) == set(
        k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc."))
    from pretrain.methods.mae import MaskedAutoencoderViT

    vit = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                               decoder_depth=1, decoder_num_heads=2)
    assert read_backbone({"model": vit.state_dict()}).family == "vit"
    from transfer.convert import to_torchvision

    with pytest.raises(CheckpointFormatError, match="converts ResNets.*MAE"):
        to_torchvision({"model": vit.state_dict()})


def test_to_torchvision_reports_every_dropped_tensor(tmp_path):
    """MoCo v2: the key encoder, the queue and the MLP head; MoCo v3: the momentum encoder and predictor."""
    from transfer.convert import to_torchvision

    model = build_moco("resnet18", K=64, mlp=True)
    v2 = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    report = to_torchvision(v2)
    assert report.ok and report.converted == len(read_backbone(v2).state_dict)
    assert set(report.dropped) == {k for k in model.state_dict()
                                   if not k.startswith("encoder_q.") or k.startswith("encoder_q.fc.")}
    r18 = torchvision.models.resnet18().state_dict()
    v3 = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in r18.items()},
                         **{f"module.momentum_encoder.{k}": v for k, v in r18.items()},
                         "module.predictor.0.weight": torch.zeros(4, 4)}}
    report = to_torchvision(v3)
    assert report.ok and len(report.dropped) == len(r18) + 2 + 1  # momentum encoder, base fc (w, b), predictor
    with pytest.raises(ValueError, match="--patch-size"):
        to_torchvision(v2, patch_size=16)


# ------------------------------------------------------------------ kNN
def test_knn_scores_match_brute_force():
    from pretrain.knn import knn_scores

    torch.manual_seed(0)
    train = F.normalize(torch.randn(30, 5), dim=1)
    labels = torch.randint(0, 3, (30,))
    test = F.normalize(torch.randn(4, 5), dim=1)
    scores = knn_scores(test, train, labels, 3, k=7, temperature=0.1, chunk=3)
    for i in range(4):
        sims = [(float(test[i] @ train[j]), int(labels[j])) for j in range(30)]
        top = sorted(sims, reverse=True)[:7]
        expect = [sum(torch.exp(torch.tensor(s / 0.1)).item() for s, c in top if c == cls) for cls in range(3)]
        assert torch.allclose(scores[i], torch.tensor(expect), rtol=1e-4)


def test_knn_monitor_on_a_labelled_folder(tmp_path):
    from PIL import Image

    from pretrain.knn import knn_evaluate

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for split in ("train", "val"):
        for name, rgb in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (24, 24), tuple(max(0, c - 10 * i) for c in rgb)).save(
                    tmp_path / split / name / f"{i}.png")
    mean_colour = lambda x: x.mean(dim=(2, 3))  # noqa: E731
    res = knn_evaluate(mean_colour, tmp_path / "train", tmp_path / "val", img_size=16, k=3)
    assert res["top1"] == 100.0
    res_rand = knn_evaluate(lambda x: torch.randn(x.shape[0], 8), tmp_path / "train", tmp_path / "val", img_size=16)
    assert res_rand["top1"] < 100.0
