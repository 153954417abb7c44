"""MoCo v3 (pretrain/methods/mocov3.py) against a re-derivation of the authors' code.

The reference below is written for these tests from reading the authors' repository
(facebookresearch/moco-v3: ``moco/builder.py``, ``vits.py``, ``main_moco.py``), kept to their
arithmetic and their initialisation order, with the minimal adaptations a single CPU process and
timm 1.0 need: ``concat_all_gather`` over one process is the identity and the rank is 0; labels are
made on the tensors' device instead of ``.cuda()``; timm 1.0 renamed ``num_tokens`` to
``num_prefix_tokens`` and moved ``PatchEmbed`` to ``timm.layers``.
"""
import argparse
import json
import math
from functools import partial, reduce
from operator import mul

import pytest
import torch
import torch.nn as nn
import torchvision
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from conftest import REPO
from pretrain.methods.mocov3 import (BYOL_VIEWS, MoCoV3Method, MoCoV3ResNet, MoCoV3ViT, VITS, build_vit, momentum_at,
                                     sincos_table)


# ====================================================== the authors' code, re-derived
class RefMoCo(nn.Module):
    """moco/builder.py ``MoCo``: base + momentum encoder, projector / predictor MLPs, symmetric InfoNCE."""

    def __init__(self, base_encoder, dim=256, mlp_dim=4096, T=1.0):
        super().__init__()
        self.T = T
        self.base_encoder = base_encoder(num_classes=mlp_dim)
        self.momentum_encoder = base_encoder(num_classes=mlp_dim)
        self._build_projector_and_predictor_mlps(dim, mlp_dim)
        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            param_m.data.copy_(param_b.data)
            param_m.requires_grad = False

    def _build_mlp(self, num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
        mlp = []
        for layer in range(num_layers):
            dim1 = input_dim if layer == 0 else mlp_dim
            dim2 = output_dim if layer == num_layers - 1 else mlp_dim
            mlp.append(nn.Linear(dim1, dim2, bias=False))
            if layer < num_layers - 1:
                mlp.append(nn.BatchNorm1d(dim2))
                mlp.append(nn.ReLU(inplace=True))
            elif last_bn:
                mlp.append(nn.BatchNorm1d(dim2, affine=False))
        return nn.Sequential(*mlp)

    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        pass

    @torch.no_grad()
    def _update_momentum_encoder(self, m):
        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            param_m.data = param_m.data * m + param_b.data * (1. - m)

    def contrastive_loss(self, q, k):
        q = nn.functional.normalize(q, dim=1)
        k = nn.functional.normalize(k, dim=1)
        k = torch.cat([k], dim=0)  # concat_all_gather over a world of one process
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.T
        N = logits.shape[0]
        labels = (torch.arange(N, dtype=torch.long) + N * 0).to(q.device)  # rank 0
        return nn.CrossEntropyLoss()(logits, labels) * (2 * self.T)

    def forward(self, x1, x2, m):
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self._update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


class RefMoCoResNet(RefMoCo):
    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        hidden_dim = self.base_encoder.fc.weight.shape[1]
        del self.base_encoder.fc, self.momentum_encoder.fc
        self.base_encoder.fc = self._build_mlp(2, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.fc = self._build_mlp(2, hidden_dim, mlp_dim, dim)
        self.predictor = self._build_mlp(2, dim, mlp_dim, dim, False)


class RefMoCoViT(RefMoCo):
    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        hidden_dim = self.base_encoder.head.weight.shape[1]
        del self.base_encoder.head, self.momentum_encoder.head
        self.base_encoder.head = self._build_mlp(3, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.head = self._build_mlp(3, hidden_dim, mlp_dim, dim)
        self.predictor = self._build_mlp(2, dim, mlp_dim, dim)


class RefVisionTransformerMoCo(VisionTransformer):
    """vits.py ``VisionTransformerMoCo`` on timm 1.0's VisionTransformer."""

    def __init__(self, stop_grad_conv1=False, **kwargs):
        super().__init__(**kwargs)
        self.build_2d_sincos_position_embedding()
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    val = math.sqrt(6. / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -val, val)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.patch_embed, PatchEmbed):
            val = math.sqrt(6. / float(3 * reduce(mul, self.patch_embed.patch_size, 1) + self.embed_dim))
            nn.init.uniform_(self.patch_embed.proj.weight, -val, val)
            nn.init.zeros_(self.patch_embed.proj.bias)
            if stop_grad_conv1:
                self.patch_embed.proj.weight.requires_grad = False
                self.patch_embed.proj.bias.requires_grad = False

    def build_2d_sincos_position_embedding(self, temperature=10000.):
        h, w = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(ref_sincos(h, w, self.embed_dim, temperature))
        assert self.num_prefix_tokens == 1, "Assuming one and only one token, [cls]"  # timm 0.4: num_tokens
        self.pos_embed.requires_grad = False


def ref_sincos(h, w, embed_dim, temperature=10000.):
    """The body of vits.py's ``build_2d_sincos_position_embedding`` (class row included)."""
    grid_w = torch.arange(w, dtype=torch.float32)
    grid_h = torch.arange(h, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")  # torch.meshgrid's default, spelled out
    assert embed_dim % 4 == 0
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1. / (temperature ** omega)
    out_w = torch.einsum("m,d->md", [grid_w.flatten(), omega])
    out_h = torch.einsum("m,d->md", [grid_h.flatten(), omega])
    pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None, :, :]
    pe_token = torch.zeros([1, 1, embed_dim], dtype=torch.float32)
    return torch.cat([pe_token, pos_emb], dim=1)


def ref_vit(patch_size, embed_dim, depth, num_heads, **kwargs):
    return RefVisionTransformerMoCo(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                    mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


ref_vit_small = partial(ref_vit, 16, 384, 12, 12)  # vits.vit_small: 12 heads
ref_vit_base = partial(ref_vit, 16, 768, 12, 12)
ref_vit_pico = partial(ref_vit, 8, 96, 4, 3)  # the project's CPU size, the authors' recipe


def adjust_moco_momentum(epoch, args):
    """main_moco.py."""
    return 1. - 0.5 * (1. + math.cos(math.pi * epoch / args.epochs)) * (1. - args.moco_m)


# ====================================================== helpers
DIM, MLP_DIM, T = 32, 64, 0.2


def pair(kind, seed=0):
    """(the project's model, the reference) of one kind, same constructor arguments, each from ``seed``."""
    if kind == "vit":
        torch.manual_seed(seed)
        ours = MoCoV3ViT(partial(build_vit, "vit_pico", img_size=32, stop_grad_conv1=True), DIM, MLP_DIM, T)
        torch.manual_seed(seed)
        ref = RefMoCoViT(partial(ref_vit_pico, img_size=32, stop_grad_conv1=True), DIM, MLP_DIM, T)
    else:
        torch.manual_seed(seed)
        ours = MoCoV3ResNet(partial(torchvision.models.resnet18, zero_init_residual=True), DIM, MLP_DIM, 1.0)
        torch.manual_seed(seed)
        ref = RefMoCoResNet(partial(torchvision.models.resnet18, zero_init_residual=True), DIM, MLP_DIM, 1.0)
    return ours, ref


def close(a, b):
    """Equal to 1e-5, absolute or relative (float32 sums in another order differ by ~1e-6 relative)."""
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def authors_file(model, arch, epoch=3):
    """The layout of the authors' ``checkpoint_%04d.pth.tar`` (DDP's ``module.`` prefix)."""
    return {"epoch": epoch, "arch": arch, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def timm_vit(img_size, patch_size, embed_dim, depth, num_heads):
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=4, qkv_bias=True,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)


# ====================================================== a. the model
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_builds_the_authors_model_with_their_names_and_initialisation(kind, one_thread):
    ours, ref = pair(kind)
    assert list(ours.state_dict()) == list(ref.state_dict())  # base_encoder.*, momentum_encoder.*, predictor.*
    assert {k.split(".")[0] for k in ours.state_dict()} == {"base_encoder", "momentum_encoder", "predictor"}
    # The same draws in the same order: the same initial weights, bit for bit.
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert a.shape == b.shape and torch.equal(a, b), k
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert a.requires_grad == b.requires_grad, k
    assert not any(p.requires_grad for p in ours.momentum_encoder.parameters())
    ref.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_loss_gradients_and_momentum_update_match_the_authors(kind, one_thread):
    ours, ref = pair(kind)
    # Other weights than the shared seed gives (the momentum encoder's too), copied into both.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref.load_state_dict(ours.state_dict(), strict=True)
    frozen = ours.base_encoder.patch_embed.proj.weight.clone() if kind == "vit" else None
    ours.train(), ref.train()  # BN in the MLPs (and the ResNet) on batch statistics
    opts = [torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05) for model in (ours, ref)]
    gen = torch.Generator().manual_seed(1)
    for step, m in enumerate([0.9, 0.8, 0.95]):
        x1, x2 = torch.randn(8, 3, 32, 32, generator=gen), torch.randn(8, 3, 32, 32, generator=gen)
        losses = []
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad(set_to_none=True)
            loss = model(x1, x2, m)
            loss.backward()
            losses.append(loss)
        assert torch.isfinite(losses[0])
        assert close(losses[0], losses[1]), (step, losses)
        for part in ("base_encoder", "predictor"):
            for (k, a), (_, b) in zip(getattr(ours, part).named_parameters(), getattr(ref, part).named_parameters()):
                assert (a.grad is None) == (b.grad is None), (step, part, k)
                if a.grad is not None:
                    assert close(a.grad, b.grad), (step, part, k)
        for (k, a), (_, b) in zip(ours.momentum_encoder.named_parameters(), ref.momentum_encoder.named_parameters()):
            assert close(a, b), (step, "momentum_encoder", k)
            assert a.grad is None and not a.requires_grad, k
        for opt in opts:
            opt.step()
        for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
            assert close(a.float(), b.float()), (step, k)  # BN running stats too
        # Each step compared from the same state: float32 rounding (sums in other orders, ~1e-7) would
        # otherwise grow through the batch norms of 8 samples past 1e-5 within a few steps.
        ref.load_state_dict(ours.state_dict(), strict=True)
    # After steps, the momentum encoder is a moving average, not the base encoder.
    moved = [k for (k, a), (_, b) in zip(ours.base_encoder.named_parameters(), ours.momentum_encoder.named_parameters())
             if a.requires_grad and not torch.allclose(a, b, atol=1e-6)]
    assert moved
    if kind == "vit":  # the frozen patch projection stays where it started
        assert torch.equal(ours.base_encoder.patch_embed.proj.weight, frozen)


def test_momentum_update_is_the_authors_formula(one_thread):
    ours, _ = pair("vit")
    with torch.no_grad():
        for p in ours.base_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in ours.momentum_encoder.parameters()]
    base = [p.clone() for p in ours.base_encoder.parameters()]
    ours.update_momentum_encoder(0.7)
    for pm, pb, after in zip(before, base, ours.momentum_encoder.parameters()):
        assert torch.allclose(after, pm * 0.7 + pb * (1. - 0.7), atol=1e-6, rtol=0)


def test_vit_small_and_base_are_the_authors_shapes():
    """vit_small / vit_base: the authors' shapes (12 heads for ViT-S too), built on the meta device."""
    for arch, ref_builder in (("vit_small", ref_vit_small), ("vit_base", ref_vit_base)):
        with torch.device("meta"):
            ours = MoCoV3ViT(partial(build_vit, arch), 256, 4096, 0.2)
            ref = RefMoCoViT(ref_builder, 256, 4096, 0.2)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
        for a, b in zip(ours.base_encoder.blocks, ref.base_encoder.blocks):
            assert a.attn.num_heads == b.attn.num_heads == 12
        assert VITS[arch].num_heads == 12
        assert ours.base_encoder.patch_embed.proj.weight.requires_grad  # stop_grad_conv1 is off by default


def test_sincos_position_table_is_the_authors():
    for grid, dim in (((4, 4), 96), ((14, 14), 384), ((1, 1), 8)):
        assert torch.equal(sincos_table(grid, dim), ref_sincos(*grid, dim)), grid
    vit = build_vit("vit_pico", img_size=32)
    assert torch.equal(vit.pos_embed, ref_sincos(4, 4, 96)) and not vit.pos_embed.requires_grad
    # A non-square grid: the rows' code in the first half, the columns' in the second, per patch in
    # raster order (as timm flattens patches). (The authors only ever build square grids; their
    # meshgrid(grid_w, grid_h) table is ordered for those: on a non-square grid it differs.)
    h, w, dim = 2, 3, 16
    table = sincos_table((h, w), dim)[0, 1:]
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    for r in range(h):
        for c in range(w):
            row, col = torch.tensor(float(r)) * omega, torch.tensor(float(c)) * omega
            expect = torch.cat([row.sin(), row.cos(), col.sin(), col.cos()])
            assert torch.allclose(table[r * w + c], expect, atol=1e-6), (r, c)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_table((2, 2), 30)


def test_vit_initialisation_properties():
    torch.manual_seed(0)
    vit = build_vit("vit_pico", img_size=32, stop_grad_conv1=True)
    assert 0.3e-6 < vit.cls_token.std().item() < 3e-6
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0, name
            fan_out, fan_in = m.weight.shape
            if "qkv" in name:
                fan_out //= 3  # q, k and v as three matrices
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound, name
    proj = vit.patch_embed.proj
    assert torch.count_nonzero(proj.bias) == 0
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 96))
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound
    assert not proj.weight.requires_grad and not proj.bias.requires_grad and not vit.pos_embed.requires_grad
    trained = build_vit("vit_pico", img_size=32, stop_grad_conv1=False)
    assert trained.patch_embed.proj.weight.requires_grad and trained.patch_embed.proj.bias.requires_grad


# ------------------------------------------------------------ the authors' checkpoints
def test_authors_vit_checkpoint_exports_a_timm_vit(tmp_path, one_thread):
    from pretrain.backbones import read_backbone
    from pretrain.checkpoint import save_atomic

    torch.manual_seed(0)
    ref = RefMoCoViT(partial(ref_vit_pico, img_size=32, stop_grad_conv1=True), DIM, MLP_DIM, T)
    with torch.no_grad():
        ref.base_encoder.cls_token.normal_()  # let the class token matter
    ckpt = authors_file(ref, "vit_pico")
    # Their file loads strictly into the project's model.
    ours = MoCoV3ViT(partial(build_vit, "vit_pico", img_size=32), DIM, MLP_DIM, T)
    ours.load_state_dict({k[len("module."):]: v for k, v in ckpt["state_dict"].items()}, strict=True)

    path = save_atomic(ckpt, tmp_path / "checkpoint_0002.pth.tar")
    export = read_backbone(str(path))
    assert export.family == "vit" and export.label == "moco_v3"
    assert export.provenance.method == "mocov3" and export.provenance.epochs == 3
    assert export.provenance.source == str(path) and export.provenance.data is None
    assert export.shape["num_heads"] == VITS["vit_pico"].num_heads == 3
    assert export.shape["img_size"] == 32 and export.shape["patch_size"] == 8 and export.shape["depth"] == 4
    expected_dropped = {k for k in ref.state_dict()
                        if not k.startswith("base_encoder.") or k.startswith("base_encoder.head.")}
    assert set(export.dropped) == expected_dropped
    assert any(k.startswith("momentum_encoder.") for k in export.dropped)
    assert any(k.startswith("predictor.") for k in export.dropped)
    assert any(k.startswith("base_encoder.head.") for k in export.dropped)

    net = timm_vit(32, 8, 96, 4, 3)
    net.load_state_dict(export.state_dict, strict=True)
    net.eval(), ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.forward_features(x), ref.base_encoder.forward_features(x), atol=1e-5)
        assert torch.allclose(MoCoV3Method().features(ref, x), net(x), atol=1e-5)

    # Heads are not in the tensors: they come from the architecture the file names (12 for vit_small).
    assert read_backbone(authors_file(ref, "vit_small")).shape["num_heads"] == VITS["vit_small"].num_heads == 12
    unnamed = {k: v for k, v in ckpt.items() if k != "arch"}
    assert read_backbone(unnamed).shape["num_heads"] == 12  # the authors' ViTs all have 12


def test_convert_checkpoint_writes_a_folder_timm_loads(tmp_path, one_thread):
    """tools/convert_checkpoint.py --to timm with a folder: safetensors + config.json that timm builds and loads,
    computing the base encoder's features; every tool reads the folder back as the same backbone."""
    import timm

    from conftest import run_tool
    from pretrain.backbones import read_backbone
    from pretrain.checkpoint import save_atomic

    torch.manual_seed(0)
    ref = RefMoCoViT(partial(ref_vit_pico, img_size=32), DIM, MLP_DIM, T)
    path = save_atomic(authors_file(ref, "vit_pico"), tmp_path / "vit-pico-300ep.pth.tar")
    proc = run_tool("tools/convert_checkpoint.py", path, tmp_path / "published", "--to", "timm")
    assert "moco_v3" in proc.stdout and (tmp_path / "published" / "model.safetensors").is_file()
    net = timm.create_model(f"local-dir:{tmp_path / 'published'}", pretrained=True).eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), MoCoV3Method().features(ref, x), atol=1e-5)
    again = read_backbone(tmp_path / "published")
    assert (again.label, again.provenance.epochs, again.shape["num_heads"]) == ("moco_v3", 3, 3)
    assert again.state_dict.keys() == read_backbone(path).state_dict.keys()


def test_authors_vit_small_file_exports_12_heads():
    """A ViT-S/16 file of the authors (meta tensors: shapes only): 12 heads, which timm's preset (6) has not."""
    from pretrain.backbones import read_backbone

    with torch.device("meta"):
        ref = RefMoCoViT(ref_vit_small, 256, 4096, 0.2)
    export = read_backbone(authors_file(ref, "vit_small", epoch=300))
    assert export.arch == "vit_small_patch16" and export.shape["num_heads"] == 12
    assert export.shape["embed_dim"] == 384 and export.shape["depth"] == 12 and export.shape["img_size"] == 224
    assert export.provenance.epochs == 300 and export.label == "moco_v3"
    config = export.timm_config()
    assert config["model_args"]["num_heads"] == 12 and config["architecture"] != "vit_small_patch16_224"


def test_authors_resnet_checkpoint_exports_a_torchvision_resnet(one_thread):
    from pretrain.backbones import read_backbone
    from pretrain.methods.moco import resnet_features

    _, ref = pair("resnet")
    with torch.no_grad():
        for m in ref.base_encoder.modules():
            if isinstance(m, nn.BatchNorm2d):  # zero_init_residual zeroed some: make every block matter
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    export = read_backbone(authors_file(ref, "resnet18", epoch=100))
    assert export.family == "resnet" and export.arch == "resnet18" and export.label == "moco_v3"
    assert export.provenance.epochs == 100
    assert set(export.dropped) == {k for k in ref.state_dict()
                                   if not k.startswith("base_encoder.") or k.startswith("base_encoder.fc.")}
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(export.state_dict, strict=True)
    net.eval(), ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), resnet_features(ref.base_encoder, x), atol=1e-5)


# ====================================================== b. the momentum schedule
def test_momentum_schedule_is_the_authors():
    args = argparse.Namespace(epochs=100, moco_m=0.99)
    for epoch in (0, 0.01, 0.5, 1.25, 33.3, 50, 77.7, 99.99, 100):
        assert momentum_at(epoch, 100, 0.99) == adjust_moco_momentum(epoch, args), epoch
    args = argparse.Namespace(epochs=7, moco_m=0.996)
    for epoch in (0, 1 / 3, 3.5, 6.9):
        assert momentum_at(epoch, 7, 0.996) == adjust_moco_momentum(epoch, args), epoch
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99) and momentum_at(100, 100, 0.99) == 1.0


def test_on_step_sets_and_returns_the_momentum():
    from pretrain.config import load_config

    method = MoCoV3Method()
    cfg = load_config(None, ["data.synthetic=true", "train.epochs=10", "model.momentum=0.98"], method="mocov3")
    with pytest.raises(RuntimeError, match="on_step"):
        method.loss(None, [torch.zeros(1, 2, 3, 8, 8)], cfg)  # no momentum before the first on_step
    for epoch in (0.0, 2.5, 9.75):
        expect = adjust_moco_momentum(epoch, argparse.Namespace(epochs=10, moco_m=0.98))
        assert method.on_step(None, cfg, epoch) == {"moco_m": expect} and method.momentum == expect
    const = load_config(None, ["data.synthetic=true", "train.epochs=10", "model.momentum=0.98",
                               "model.momentum_cos=false"], method="mocov3")
    for epoch in (0.0, 2.5, 9.75):
        assert method.on_step(None, const, epoch) == {"moco_m": 0.98} and method.momentum == 0.98


# ====================================================== c. the asymmetric views
def test_byol_views_draw_the_authors_probabilities():
    from pretrain.transforms import FACTORS, GRAY, JITTER, ORDER, SIGMA, SOLARIZE, TwoViews

    views = TwoViews(BYOL_VIEWS, img_size=32, min_scale=0.08)
    n = 3000
    params = []
    for seed in range(n):
        torch.manual_seed(seed)
        plans, p = views.plan((48, 40))
        assert len(plans) == 2 and p.shape == (2, 12)
        params.append(p)
    params = torch.stack(params)  # [n, 2, 12]

    def freq(col, view):
        return (params[:, view, col] > 0).float().mean().item()

    def near(f, p):  # within 4 binomial standard deviations
        return abs(f - p) <= 4 * math.sqrt(p * (1 - p) / n)

    assert freq(SIGMA, 0) == 1.0 and near(freq(SIGMA, 1), 0.1)  # blur: always / 10%
    assert freq(SOLARIZE, 0) == 0.0 and near(freq(SOLARIZE, 1), 0.2)  # solarize: never / 20%
    for view in (0, 1):
        assert near(freq(JITTER, view), 0.8) and near(freq(GRAY, view), 0.2), view
    # Independent draws: the two views' decisions are not the same coin.
    assert near(((params[:, 0, JITTER] > 0) & (params[:, 1, JITTER] > 0)).float().mean().item(), 0.64)
    # ColorJitter(0.4, 0.4, 0.2, 0.1): brightness and contrast in [0.6, 1.4], saturation [0.8, 1.2], hue [-0.1, 0.1].
    jittered = params[params[..., JITTER] > 0]
    factors = jittered[:, FACTORS]
    for i, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert factors[:, i].min() >= lo and factors[:, i].max() <= hi, i
        assert factors[:, i].min() < lo + 0.05 * (hi - lo) and factors[:, i].max() > hi - 0.05 * (hi - lo), i
    assert all(sorted(o.tolist()) == [0, 1, 2, 3] for o in jittered[:, ORDER].long())
    plain = params[params[..., JITTER] == 0]
    assert torch.count_nonzero(plain[:, FACTORS]) == 0
    sigma = params[..., SIGMA][params[..., SIGMA] > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0  # GaussianBlur([.1, 2.])


# ====================================================== d. training and resuming
def tiny_overrides(out, *extra):
    return ["data.img_size=32", "data.synthetic_images=16", "data.num_workers=0", "train.batch_size=8",
            "train.epochs=2", "train.progress=false", "train.tensorboard=false", "train.log_every=1",
            f"train.output_dir={out}", *extra]


def run(out, *extra, resume=None):
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    cfg = load_config(REPO / "configs/pretrain/mocov3_vit_pico_cpu.yaml", tiny_overrides(out, *extra))
    trainer = Trainer(cfg, resume=resume)
    trainer.fit()
    return trainer


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_resumes_exactly_and_writes_the_authors_checkpoint(tmp_path, one_thread):
    import timm

    from pretrain.checkpoint import load_file

    straight = run(tmp_path / "a")
    # Interrupted in epoch 0 (after step 1) and in epoch 1 (after step 3), resumed each time.
    run(tmp_path / "b", "train.max_iters=1")
    run(tmp_path / "b", "train.max_iters=3", resume="auto")
    resumed = run(tmp_path / "b", resume="auto")
    assert straight.step == resumed.step == 4
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ra, rb = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["moco_m"] for r in ra] == [r["moco_m"] for r in rb]
    # The per-step schedule: momentum at the fractional epoch of each step (2 steps an epoch).
    assert [r["moco_m"] for r in ra] == [momentum_at(s / 2, 2, 0.99) for s in range(4)]
    assert all(math.isfinite(r["loss"]) for r in ra)

    ckpt = load_file(tmp_path / "a" / "checkpoint_0001.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "vit_pico" and "optimizer" in ckpt
    sd = ckpt["state_dict"]
    assert all(k.startswith(("module.base_encoder.", "module.momentum_encoder.", "module.predictor.")) for k in sd)
    assert any(k.startswith("module.predictor.") for k in sd)
    fresh = MoCoV3ViT(partial(build_vit, "vit_pico", img_size=32, stop_grad_conv1=True), 64, 256, 0.2)
    fresh.load_state_dict({k[len("module."):]: v for k, v in sd.items()}, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sa[k]), k
    # The authors' main_moco.py names it checkpoint_%04d (0-based epoch) and stores the next epoch.
    assert (tmp_path / "a" / "checkpoint_last.pth.tar").is_file()

    folder = tmp_path / "a" / "backbone"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    net = timm.create_model(f"local-dir:{folder}", pretrained=True)  # without it: random weights
    assert net.num_classes == 0
    net.eval()
    straight.model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net(x), MoCoV3Method().features(straight.model, x), atol=1e-5)


def test_resnet_recipe_trains_on_cpu(tmp_path, one_thread):
    import timm

    from pretrain.lars import LARS

    trainer = run(tmp_path / "r", "model.arch=resnet18", "optim.name=lars", "model.temperature=1.0", "model.dim=32",
                  "model.mlp_dim=64", "train.epochs=1")
    assert isinstance(trainer.model, MoCoV3ResNet) and trainer.step == 2
    assert isinstance(trainer.optimizer, LARS)
    losses = [r["loss"] for r in records(tmp_path / "r")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    net = timm.create_model(f"local-dir:{tmp_path / 'r' / 'backbone'}", pretrained=True)
    net.eval(), trainer.model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net(x), MoCoV3Method().features(trainer.model, x), atol=1e-5)


class RefLARS(torch.optim.Optimizer):
    """moco/optimizer.py: no rate scaling or weight decay for parameters <= 1-d."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0., torch.where(update_norm > 0, (g["trust_coefficient"] * param_norm
                                                                                  / update_norm), one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def test_optimizers_are_the_authors():
    from pretrain.config import load_config

    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (6,), (3, 2, 2), (4, 4)]
    params = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    params[0][3].zero_(), params[1][3].zero_()  # a zero matrix: trust ratio 1
    ours, ref = ([nn.Parameter(t.clone()) for t in params[0]] for _ in range(2))
    from pretrain.lars import LARS

    opts = [LARS(ours, lr=0.3, weight_decay=1e-6, momentum=0.9), RefLARS(ref, lr=0.3, weight_decay=1e-6, momentum=0.9)]
    for _ in range(3):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for group, opt in zip((ours, ref), opts):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            opt.step()
        for a, b in zip(ours, ref):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)
    # The recipes: every trainable parameter in one group, weight decay on all of them (as main_moco.py).
    method = MoCoV3Method()
    for arch, name, cls in (("vit_pico", "adamw", torch.optim.AdamW), ("resnet18", "lars", LARS)):
        cfg = load_config(None, ["data.synthetic=true", "data.img_size=32", f"model.arch={arch}",
                                 f"optim.name={name}", "model.dim=16", "model.mlp_dim=32"], method="mocov3")
        model = method.build_model(cfg)
        opt = method.build_optimizer(model, cfg, 0.1)
        assert isinstance(opt, cls) and len(opt.param_groups) == 1
        assert opt.param_groups[0]["weight_decay"] == cfg.optim.weight_decay
        assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert load_config(None, ["data.synthetic=true"], method="mocov3").optim.betas == [0.9, 0.999]  # AdamW's default
