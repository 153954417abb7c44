"""CLIP and OpenCLIP image towers (``pretrain.formats.clip``): OpenAI's model re-derived here from their code
(github.com/openai/CLIP, clip/model.py: ``VisionTransformer``, ``ResidualAttentionBlock``, ``QuickGELU``, the
fp32 ``LayerNorm``, a text tower for the full model's state dict), tiny and random, saved as OpenAI's TorchScript
archive, as OpenAI's state dict and as OpenCLIP's files (OpenCLIP's ViT is the same modules: the exact GELU by
default, LayerScale ``ls_1`` / ``ls_2`` as an option), read by ``read_backbone`` and compared with the authors'
forward to 1e-5 on CPU fp32: through timm from the export's ``config.json`` and through the frozen rungs' backbone.
"""
from __future__ import annotations

import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

from pretrain.backbones import read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.formats import format_of
from pretrain.formats.clip import CLIP_MEAN, CLIP_STD

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # tracing nn.MultiheadAttention


# ------------------------------------------------------------------ the authors' model (clip/model.py)
class LayerNorm(nn.LayerNorm):
    """Subclass torch's LayerNorm to handle fp16."""

    def forward(self, x: torch.Tensor):
        orig_type = x.dtype
        ret = super().forward(x.type(torch.float32))
        return ret.type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor):
        return x * torch.sigmoid(1.702 * x)


class OpenCLIPLayerScale(nn.Module):
    """open_clip/transformer.py's LayerScale (``ls_init_value``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, attn_mask: torch.Tensor = None, layer_scale: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model))
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask
        if layer_scale:  # OpenCLIP's option (Identity otherwise: no tensors)
            self.ls_1, self.ls_2 = OpenCLIPLayerScale(d_model), OpenCLIPLayerScale(d_model)
        else:
            self.ls_1 = self.ls_2 = nn.Identity()

    def attention(self, x: torch.Tensor):
        self.attn_mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]

    def forward(self, x: torch.Tensor):
        x = x + self.ls_1(self.attention(self.ln_1(x)))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor = None, layer_scale=False):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, layer_scale)
                                         for _ in range(layers)])

    def forward(self, x: torch.Tensor):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 layer_scale: bool = False):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, layer_scale=layer_scale)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor):
        x = self.conv1(x)  # shape = [*, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1)  # shape = [*, width, grid ** 2]
        x = x.permute(0, 2, 1)  # shape = [*, grid ** 2, width]
        x = torch.cat([self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                                      device=x.device), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])
        if self.proj is not None:
            x = x @ self.proj
        return x


class CLIP(nn.Module):
    """The ViT CLIP (the ModifiedResNet branch left out); ``vision_heads = vision_width // 64`` as theirs."""

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length,
                 vocab_size, transformer_width, transformer_heads, transformer_layers, layer_scale=False):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim, layer_scale)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       attn_mask=self.build_attention_mask())
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def build_attention_mask(self):
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)  # zero out the lower diagonal
        return mask

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text)


IMG, PATCH, WIDTH = 32, 8, 128  # 2 heads of 64, as the authors derive them


def tiny_clip(seed: int, gelu: bool = False, layer_scale: bool = False) -> CLIP:
    """Random weights everywhere (LayerScale and the norms too: a lost tensor must show in the features)."""
    torch.manual_seed(seed)
    model = CLIP(16, IMG, 2, WIDTH, PATCH, 6, 20, 64, 1, 1, layer_scale=layer_scale)
    if gelu:  # OpenCLIP's default activation (its block names it "gelu" too)
        for block in model.visual.transformer.resblocks:
            block.mlp.gelu = nn.GELU()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def authors_features(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The authors' forward without the image projection: ``ln_post`` of the class token."""
    proj, visual.proj = visual.proj, None
    try:
        with torch.no_grad():
            return visual(x)
    finally:
        visual.proj = proj


# ------------------------------------------------------------------ the released layouts
@dataclass
class Case:
    filename: str
    model: CLIP
    label: str
    place: str  # where the CLIP model's keys are in the file (the dropped names carry it)
    act: str  # the export's activation (timm name)
    allow_pickle: bool = False


def write_case(kind: str, folder) -> Case:
    image, text = torch.randn(2, 3, IMG, IMG), torch.randint(0, 20, (2, 6))
    if kind == "openai-torchscript":  # OpenAI's release: the traced model (theirs is traced too)
        model = tiny_clip(1)
        torch.jit.trace(model, (image, text)).save(str(folder / "ViT-B-16.pt"))
        return Case("ViT-B-16.pt", model, "clip", "", "quick_gelu")
    if kind == "openai-torchscript-quantized":  # a buffer the safe reader does not rebuild: --allow-pickle
        model = tiny_clip(2)
        model.register_buffer("calibration", torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8))
        torch.jit.trace(model, (image, text)).save(str(folder / "ViT-B-32.pt"))
        return Case("ViT-B-32.pt", model, "clip", "", "quick_gelu", allow_pickle=True)
    if kind == "openai-state-dict":  # clip.load(jit=False).state_dict(), fp16 as the release's weights
        model = tiny_clip(3)
        model.half().float()  # the features the fp16 weights give in fp32
        torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "clip_vit_b16.pth")
        return Case("clip_vit_b16.pth", model, "clip", "", "quick_gelu")
    if kind == "openclip-checkpoint":  # open_clip_train's epoch checkpoint of a DDP run of a -quickgelu model
        model = tiny_clip(4)
        ckpt = {"epoch": 32, "name": "2022_05_01-model_ViT-B-32-quickgelu-lr_0.0005-b_256-j_8-p_amp",
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}}
        torch.save(ckpt, folder / "epoch_32.pt")
        return Case("epoch_32.pt", model, "openclip", "state_dict.module.", "quick_gelu")
    if kind == "openclip-hub":  # a hub file of a GELU model with LayerScale
        model = tiny_clip(5, gelu=True, layer_scale=True)
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
        return Case("open_clip_pytorch_model.bin", model, "openclip", "", "gelu")
    raise KeyError(kind)


KINDS = ["openai-torchscript", "openai-torchscript-quantized", "openai-state-dict", "openclip-checkpoint",
         "openclip-hub"]


@pytest.mark.parametrize("kind", KINDS)
def test_clip_files_read_to_the_authors_features(tmp_path, kind):
    from transfer.backbone import load_frozen_backbone

    case = write_case(kind, tmp_path)
    path = tmp_path / case.filename
    export = read_backbone(path, allow_pickle=case.allow_pickle)
    assert export.label == case.label and export.family == "vit"
    assert (export.mean, export.std) == (CLIP_MEAN, CLIP_STD)
    assert export.shape["pre_norm"] and export.shape["norm_eps"] == 1e-5
    assert export.shape.get("act_layer", "gelu") == case.act
    assert (export.shape["num_heads"], export.shape["depth"], export.shape["img_size"]) == (2, 2, IMG)
    assert ("init_values" in export.shape) == (kind == "openclip-hub")  # OpenCLIP's LayerScale
    # Every tensor of the file: the image tower in the export, the rest (text tower, proj) listed as dropped.
    model_keys = list(case.model.state_dict())  # a quantised buffer of the archive included
    visual = [k for k in model_keys if k.startswith("visual.") and k != "visual.proj"]
    assert sorted(export.dropped) == sorted(case.place + k for k in model_keys if k not in visual)
    assert case.place + "visual.proj" in export.dropped and case.place + "token_embedding.weight" in export.dropped
    assert sum(v.numel() for v in export.state_dict.values()) == sum(
        case.model.state_dict()[k].numel() for k in visual)
    assert all(v.dtype == torch.float32 for v in export.state_dict.values())

    x = torch.randn(2, 3, IMG, IMG)
    expected = authors_features(case.model.visual, x)
    with torch.no_grad():  # the dropped projection is exactly what follows these features in the authors' model
        assert torch.allclose(expected @ case.model.visual.proj, case.model.visual(x), atol=1e-5)
    # timm rebuilds it from the export's config.json alone
    vit = timm.create_model(f"local-dir:{export.save(tmp_path / 'export')}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(vit.forward_head(vit.forward_features(x), pre_logits=True), expected, atol=1e-5)
    assert tuple(vit.pretrained_cfg["mean"]) == CLIP_MEAN
    assert vit.norm_pre.eps == vit.norm.eps == vit.blocks[0].norm1.eps == 1e-5  # torch's default, CLIP's
    assert type(vit.blocks[0].mlp.act).__name__ == {"quick_gelu": "QuickGELU", "gelu": "GELU"}[case.act]
    # the frozen rungs' backbone (kNN, dense probe), normalising inputs with CLIP's mean / std
    backbone = load_frozen_backbone(path, allow_pickle=case.allow_pickle)
    assert torch.allclose(backbone.global_features(x), expected, atol=1e-5)
    assert (tuple(backbone.mean), tuple(backbone.std)) == (CLIP_MEAN, CLIP_STD)
    assert backbone.vit.norm.eps == 1e-5  # and the activation (torch's GELU or timm's: the same function)
    assert type(backbone.vit.blocks[0].mlp.act).__name__ == type(vit.blocks[0].mlp.act).__name__
    # the folder reads back with its options
    again = read_backbone(tmp_path / "export")
    assert again.vit_options() == export.vit_options() and (again.mean, again.std) == (CLIP_MEAN, CLIP_STD)


def test_the_activation_named_by_the_file_matters(tmp_path):
    """The one thing the tensors do not say: read with the wrong activation, the features are wrong. A
    -quickgelu OpenCLIP model whose name says so reads right; the same file named plainly reads as GELU."""
    model = tiny_clip(4)
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    folder = tmp_path / "ViT-B-32-quickgelu"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    x = torch.randn(2, 3, IMG, IMG)
    expected = authors_features(model.visual, x)
    for path, right in ((folder / "open_clip_pytorch_model.bin", True),
                        (tmp_path / "open_clip_pytorch_model.bin", False)):
        export = read_backbone(path)
        assert any("MLP activation" in n for n in export.notes)
        vit = timm.create_model(f"local-dir:{export.save(tmp_path / path.parent.name / 'export')}",
                                pretrained=True).eval()
        with torch.no_grad():
            close = torch.allclose(vit.forward_head(vit.forward_features(x), pre_logits=True), expected, atol=1e-5)
        assert close == right


def test_a_torchscript_archive_is_read_without_running_its_code(tmp_path):
    """data.pkl rewritten to call a function (what a hostile archive does): refused in one line saying to pass
    --allow-pickle, and the function never ran; an archive the reader does not rebuild (a quantised buffer)
    is refused the same way, and read with allow_pickle."""
    write_case("openai-torchscript", tmp_path)
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    with zipfile.ZipFile(tmp_path / "ViT-B-16.pt") as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
            dst.writestr(item, data)
    with pytest.raises(CheckpointFormatError, match=r"refusing to unpickle os.system.*--allow-pickle") as err:
        read_backbone(hostile)
    assert "\n" not in str(err.value) and not marker.exists()

    write_case("openai-torchscript-quantized", tmp_path)
    with pytest.raises(CheckpointFormatError, match=r"_rebuild_qtensor.*with allow_pickle=True \(--allow-pickle"):
        read_backbone(tmp_path / "ViT-B-32.pt")
    assert read_backbone(tmp_path / "ViT-B-32.pt", allow_pickle=True).provenance.layout.endswith(
        "(opened with torch.jit.load)")
    assert read_backbone(tmp_path / "ViT-B-16.pt").provenance.layout.endswith("(weights read without running it)")


def test_modified_resnet_and_other_towers_are_refused_with_a_reason():
    sd = {"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
          "visual.attnpool.c_proj.weight": torch.zeros(16, 2048), "logit_scale": torch.zeros(())}
    with pytest.raises(CheckpointFormatError, match="ModifiedResNet image tower .* no torchvision ResNet counterpart"):
        read_backbone(sd, path="RN50.pt")
    timm_tower = {"visual.trunk.patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "logit_scale": torch.zeros(())}
    with pytest.raises(CheckpointFormatError, match="not CLIP's ViT"):
        read_backbone({"state_dict": timm_tower, "epoch": 1}, path="epoch_1.pt")
    vit = tiny_clip(1).state_dict()
    with pytest.raises(CheckpointFormatError, match=r"no timm ViT option: visual.attn_pool.query"):
        read_backbone(vit | {"visual.attn_pool.query": torch.zeros(4, 16)}, path="coca.pt")


def test_clip_files_are_claimed_by_one_format_and_other_formats_files_not_by_clip():
    """Disjoint claims: OpenAI's layouts are clip's, OpenCLIP's openclip's; the files of test_formats'
    families are none of them."""
    import test_formats as other  # pytest puts tests/ on the path

    sd = tiny_clip(1).state_dict()
    assert format_of(sd, "ViT-B-16.pth").name == "clip"
    assert format_of(sd, "open_clip_pytorch_model.bin").name == "openclip"
    assert format_of({"state_dict": sd, "epoch": 1}, "epoch_1.pt").name == "openclip"
    assert format_of({"module." + k: v for k, v in sd.items()}, "model.pt").name == "openclip"
    for build in (other.dino_backbone, lambda: other.dino_full("teacher"), other.dinov2_backbone,
                  lambda: other.dinov2_training("teacher"), lambda: other.ijepa("target"), other.simclr):
        case = build()
        fmt = format_of(case.ckpt, case.filename)
        assert fmt is not None and fmt.name not in ("clip", "openclip")


def test_a_variant_is_refused_for_clip_files():
    with pytest.raises(CheckpointFormatError, match="its files hold one network: leave the variant out"):
        read_backbone(tiny_clip(1).state_dict(), path="ViT-B-16.pth", variant="teacher")


def test_convert_to_timm_keeps_the_clip_options(tmp_path):
    """tools/convert_checkpoint.py --to timm builds the export's ViT (norm before the blocks, no patch bias)."""
    from transfer.convert import convert

    case = write_case("openai-state-dict", tmp_path)
    report = convert(str(tmp_path / case.filename), "timm", str(tmp_path / "timm.pth"))
    assert not report.mismatched and report.converted == len(read_backbone(tmp_path / case.filename).state_dict)
