"""Precision: fp32 contrastive logits under bf16 autocast (MoCo v1/v2/v3), ``train.amp=auto`` decided from what
the hardware does (native bf16 on a GPU, a cached measurement on a CPU), and the frozen rungs' bf16 forward
recorded in results.json."""
import importlib.util
import json
import logging
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO

from pretrain import precision


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty measurement cache of this test's own."""
    monkeypatch.setenv("SSLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision.json"


def fake_timing(monkeypatch, fp32_s: float, bf16_s: float):
    """Matrix products that take these times; returns the list of (shape, bf16) timed."""
    calls = []

    def time_matmul(shape, bf16):
        calls.append((shape, bf16))
        return bf16_s if bf16 else fp32_s

    monkeypatch.setattr(precision, "time_matmul", time_matmul)
    return calls


# ------------------------------------------------------------ contrastive logits
class FirstCoordinates(nn.Module):
    """An 'encoder' whose output is exact under autocast: the first ``num_classes`` input values (times a
    parameter of 1, so that the momentum update has something to update)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.dim = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.flatten(1)[:, : self.dim] * self.scale


def test_moco_logits_under_bf16_autocast_are_the_fp32_computation():
    from pretrain.methods.moco import MoCo

    torch.manual_seed(0)
    model = MoCo(FirstCoordinates, dim=32, K=64, T=0.07)
    im_q, im_k = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    q, k = F.normalize(im_q.flatten(1)[:, :32], dim=1), F.normalize(im_k.flatten(1)[:, :32], dim=1)
    queue = model.queue.clone()
    want = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.07  # fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, labels = model(im_q, im_k)
        loss = F.cross_entropy(logits, labels)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, want, atol=1e-5, rtol=1e-6)  # bf16 products would be off by ~1e-2 / T
    assert torch.allclose(loss, F.cross_entropy(want, labels), atol=1e-6)
    # The bf16 product the old code computed is measurably different: the test can tell the two apart.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = q @ queue / 0.07
    assert (rounded.float() - want[:, 1:]).abs().max() > 1e-3


def test_mocov3_loss_under_bf16_autocast_is_the_fp32_computation():
    from pretrain.methods.mocov3 import MoCoV3ViT, build_vit

    torch.manual_seed(0)
    model = MoCoV3ViT(partial(build_vit, "vit_pico", img_size=32, stop_grad_conv1=True), 16, 32, 0.2)
    q, k = torch.randn(8, 16), torch.randn(8, 16)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    want = F.cross_entropy(qn @ kn.T / 0.2, torch.arange(8)) * 0.4
    for dtype in (torch.float32, torch.bfloat16):  # the encoders' outputs: either, under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.contrastive_loss(q.to(dtype), k.to(dtype))
        exact = want if dtype == torch.float32 else F.cross_entropy(
            F.normalize(q.bfloat16().float(), dim=1) @ F.normalize(k.bfloat16().float(), dim=1).T / 0.2,
            torch.arange(8)) * 0.4
        assert got.dtype == torch.float32 and torch.allclose(got, exact, atol=1e-6), (got, exact)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the product the old code computed: bf16
        rounded = qn @ kn.T
    assert (rounded.float() - qn @ kn.T).abs().max() / 0.2 > 1e-3


# ------------------------------------------------------------ train.amp=auto
def test_auto_picks_bf16_on_a_cpu_where_it_measures_faster_and_caches_it(cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    calls = fake_timing(monkeypatch, fp32_s=0.004, bf16_s=0.002)
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    assert "train.amp=auto: bf16 (measured: bf16 matrix products 2.00x as fast as fp32" in caplog.text
    assert "768" in caplog.text and precision.cpu_name() in caplog.text  # the widths and the machine
    assert len(calls) == 2 * len(precision.DEFAULT_SHAPES)
    # The second start-up reads the cache: no product timed again, the same choice, said so.
    caplog.clear()
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    assert len(calls) == 2 * len(precision.DEFAULT_SHAPES) and "measured before" in caplog.text
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["speedup"] == 2.0 and entry["shapes"] == [list(s) for s in precision.DEFAULT_SHAPES]
    # An explicit bf16 where it measures faster: no warning.
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16 and "slower" not in caplog.text


def test_auto_picks_fp32_on_a_cpu_where_bf16_measures_slower_and_bf16_warns(cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    fake_timing(monkeypatch, fp32_s=0.002, bf16_s=0.005)
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("auto", cpu) is None
    assert "train.amp=auto: fp32 (measured: bf16 matrix products 2.50x slower than fp32" in caplog.text
    caplog.clear()
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16  # runs as asked ...
    warning, = [r for r in caplog.records if r.levelno == logging.WARNING]  # ... with the measurement
    assert "train.amp=bf16 is slower than fp32 here (measured before: bf16 matrix products 2.50x slower" \
        in warning.getMessage()
    assert precision.autocast_dtype("none", cpu) is None
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        precision.autocast_dtype("fp16", cpu)


def test_the_measurement_is_per_set_of_shapes(cache, monkeypatch):
    calls = fake_timing(monkeypatch, fp32_s=0.002, bf16_s=0.001)
    a, b = ((128, 96, 384),), ((128, 768, 3072),)
    precision.measure_cpu_bf16(a)
    precision.measure_cpu_bf16(b)
    precision.measure_cpu_bf16(a)
    assert [s for s, _ in calls] == [a[0], a[0], b[0], b[0]] and len(json.loads(cache.read_text())) == 2


def test_a_real_measurement_runs_fast_and_is_cached(cache):
    m = precision.measure_cpu_bf16(((32, 64, 128),))
    assert m["fp32_ms"] > 0 and m["bf16_ms"] > 0 and m["speedup"] > 0 and m["shapes"] == [[32, 64, 128]]
    assert not m["cached"] and precision.measure_cpu_bf16(((32, 64, 128),))["cached"]


def test_matmul_shapes_are_the_models_heaviest_products():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=768, depth=1, num_heads=12, num_classes=10)
    # fc1 / fc2 (768 x 3072) then qkv (768 x 2304) weigh most; the patch projection (768 x 768) and head less.
    m = precision.ROWS
    assert precision.matmul_shapes(vit) == ((m, 768, 2304), (m, 768, 3072), (m, 3072, 768))
    conv = nn.Sequential(nn.Conv2d(3, 64, 7), nn.Conv2d(64, 64, 3), nn.Conv2d(64, 256, 1))
    assert precision.matmul_shapes(conv, rows=16, count=2) == ((16, 64, 256), (16, 576, 64))
    assert precision.matmul_shapes(nn.ReLU()) == precision.DEFAULT_SHAPES


@pytest.mark.parametrize("capability, want", [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_auto_on_a_gpu_wants_native_bf16(monkeypatch, caplog, capability, want):
    """A V100 (7.0) or T4 (7.5) emulates bf16, though ``torch.cuda.is_bf16_supported()`` says yes: fp32 there."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(precision, "time_matmul", lambda *a: pytest.fail("a GPU is not measured"))
    assert torch.cuda.is_bf16_supported()  # what the old rule asked: yes, so it picked bf16 on every GPU here
    gpu = torch.device("cuda", 0)
    assert precision.autocast_dtype("auto", gpu) is want
    assert f"compute capability {capability[0]}.{capability[1]}: bf16 " in caplog.text
    caplog.clear()
    assert precision.autocast_dtype("bf16", gpu) is torch.bfloat16
    assert ("emulated" in caplog.text) == (want is None)
    assert precision.autocast_dtype("fp16", gpu) is torch.float16


# ------------------------------------------------------------ frozen rungs
def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def watch_backbone(monkeypatch, user):
    """Every frozen backbone ``user`` (a module) loads from now on reports, per conv / linear layer call,
    (autocast on, output dtype); returns that list and the dtypes of the features handed on."""
    layers, features = [], []
    load = user.load_frozen_backbone

    def watched(*args, **kwargs):
        backbone = load(*args, **kwargs)
        for m in backbone.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_hook(lambda mod, i, out: layers.append((torch.is_autocast_enabled("cpu"),
                                                                             out.dtype)))
        for name in ("global_features", "dense_features"):
            def handed_on(x, method=getattr(backbone, name)):
                out = method(x)
                features.append(out.dtype)
                return out
            setattr(backbone, name, handed_on)
        return backbone

    monkeypatch.setattr(user, "load_frozen_backbone", watched)
    return layers, features


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_knn_runs_the_backbone_as_decided_and_records_it(tmp_path, cache, monkeypatch, bf16_faster, one_thread):
    import transfer.backbone
    from test_classification_protocols import write_colour_classes
    from transfer.results import read_results

    fake_timing(monkeypatch, fp32_s=0.002, bf16_s=0.001 if bf16_faster else 0.004)
    layers, features = watch_backbone(monkeypatch, transfer.backbone)  # the tool imports it from there
    data = write_colour_classes(tmp_path / "data", n_train=4, n_val=2, size=16)
    knn = _load_tool("knn_eval")
    knn.knn_eval(knn.parse_args(["--random-init", "resnet18", "--train", str(data / "train"), "--val",
                                 str(data / "val"), "--out", str(tmp_path / "knn"), "--img-size", "32",
                                 "--num-workers", "0", "--k", "5"]))
    want = "bf16" if bf16_faster else "fp32"
    assert read_results(tmp_path / "knn")["recipe"]["precision"] == want
    assert layers and set(layers) == ({(True, torch.bfloat16)} if bf16_faster else {(False, torch.float32)})
    assert features and set(features) == {torch.float32}  # the kNN votes on fp32 features


def write_seg_folder(root, n=4, size=32, classes=3, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        label = rng.integers(0, classes, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        img = np.stack([label * 80, 255 - label * 80, rng.integers(0, 255, label.shape)], -1).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("\n".join(f"c{c}" for c in range(classes)))
    return root


def test_dense_probe_runs_the_backbone_in_bf16_the_head_in_fp32_and_records_it(tmp_path, cache, monkeypatch,
                                                                               one_thread):
    import transfer.dense_probe
    from transfer.dense_probe import DenseProbe, LinearSegHead, ProbeConfig
    from transfer.results import read_results

    fake_timing(monkeypatch, fp32_s=0.002, bf16_s=0.001)
    layers, features = watch_backbone(monkeypatch, transfer.dense_probe)
    head_inputs = []
    monkeypatch.setattr(LinearSegHead, "forward", lambda self, f, forward=LinearSegHead.forward:
                        head_inputs.append(f.dtype) or forward(self, f))
    root = write_seg_folder(tmp_path / "seg")
    cfg = ProbeConfig(data_root=str(root), out=str(tmp_path / "probe"), random_init="resnet18", dataset="folder",
                      iters=2, batch=2, crop=32, eval_every=0, num_workers=0)
    DenseProbe(cfg).run()
    assert read_results(tmp_path / "probe")["recipe"]["precision"] == "bf16"
    assert layers and set(layers) == {(True, torch.bfloat16)}
    assert set(features) == set(head_inputs) == {torch.float32} and len(head_inputs) == 2 + 4  # train + val


def test_frozen_backbone_precision_choices(cache, monkeypatch):
    from transfer.backbone import load_frozen_backbone

    fake_timing(monkeypatch, fp32_s=0.001, bf16_s=0.003)  # bf16 slower on this "CPU"
    b = load_frozen_backbone(None, "resnet18")
    x = torch.randn(2, 3, 32, 32)
    fp32 = b.global_features(x)
    assert b.set_precision("auto", torch.device("cpu")) == "fp32" and torch.equal(b.global_features(x), fp32)
    assert b.set_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: runs, with a warning
    got = b.global_features(x)
    assert got.dtype == torch.float32 and not torch.equal(got, fp32)  # bf16 products, fp32 features
    assert F.cosine_similarity(got, fp32).min() > 0.99
    assert b.set_precision("fp32", torch.device("cpu")) == "fp32" and torch.equal(b.global_features(x), fp32)


def _decide_in_process(rank, world, init_file, cache_dir, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    # Each process would measure its own answer: rank 0 finds bf16 slower, rank 1 faster.
    precision.time_matmul = lambda shape, bf16: (0.003 if rank == 0 else 0.001) if bf16 else 0.002
    import os
    os.environ["SSLKIT_CACHE"] = f"{cache_dir}{rank}"  # nor would they share a cache
    results[rank] = precision.precision_name(precision.autocast_dtype("auto", torch.device("cpu")))
    dist.destroy_process_group()


def test_every_process_runs_in_rank_0s_precision(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_decide_in_process, args=(2, str(tmp_path / "init"), str(tmp_path / "cache"), results), nprocs=2)
        assert dict(results) == {0: "fp32", 1: "fp32"}
