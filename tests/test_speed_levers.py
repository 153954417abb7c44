"""The speed and memory levers: activation checkpointing (``model.grad_checkpointing``, detectron2's
``use_act_checkpoint``, mmseg's ``with_cp``) computes the same losses and gradients, drop path included,
while recomputing each block in the backward; ``train.compile`` trains to the eager losses, names its graph
breaks, keeps the checkpoints' names and resumes exactly; ``train.channels_last`` changes ResNets only."""
import copy
import json
import logging

import pytest
import torch
import torch.nn as nn

from pretrain.checkpoint import load_file
from pretrain.config import ConfigError, load_config

TINY_MAE = dict(img_size=32, decoder_depth=2, decoder_embed_dim=32, decoder_num_heads=2)


def count_block_calls(blocks):
    """A list counting the forward calls of each module in ``blocks`` (a recomputation calls it again; a
    pre-hook, since the recomputation stops once it has what the backward needs, before any post-hook)."""
    calls = [0] * len(blocks)

    def hook(i):
        def count(*_):
            calls[i] += 1
        return count

    for i, blk in enumerate(blocks):
        blk.register_forward_pre_hook(hook(i))
    return calls


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------ activation checkpointing
def test_mae_checkpointing_recomputes_blocks_and_keeps_loss_and_gradients():
    from pretrain.methods.mae import create_mae

    torch.manual_seed(0)
    plain = create_mae("mae_vit_pico_patch8", **TINY_MAE)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    imgs = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, plain.patch_embed.num_patches)
    results = []
    for model in (plain, ckpt):
        calls = count_block_calls([*model.blocks, *model.decoder_blocks])
        loss = model(imgs, mask_ratio=0.75, noise=noise)[0]
        loss.backward()
        results.append((loss.detach(), grads(model), calls))
    (loss_p, grads_p, calls_p), (loss_c, grads_c, calls_c) = results
    assert calls_p == [1] * 6  # 4 encoder + 2 decoder blocks, once each
    assert calls_c == [2] * 6  # forward, then again in the backward: the activations were not kept
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=0)
    assert grads_c.keys() == grads_p.keys() and len(grads_p) > 20
    for k in grads_p:
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-6, atol=1e-7, msg=k)
    # Without gradients (the kNN monitor's features) nothing is checkpointed.
    calls = count_block_calls(ckpt.blocks)
    ckpt.forward_features(imgs)
    assert calls == [1] * 4


def test_grad_checkpointing_is_a_config_key_of_the_vit_methods(tiny_mae_overrides):
    from pretrain.methods import get_method

    cfg = load_config(None, [*tiny_mae_overrides, "model.grad_checkpointing=true"])
    assert get_method("mae").build_model(cfg).grad_checkpointing
    assert not get_method("mae").build_model(load_config(None, tiny_mae_overrides)).grad_checkpointing

    v3 = ["model.arch=vit_pico", "model.dim=16", "model.mlp_dim=32", "data.img_size=32", "data.synthetic=true"]
    model = get_method("mocov3").build_model(load_config(None, [*v3, "model.grad_checkpointing=true"], method="mocov3"))
    assert model.base_encoder.grad_checkpointing and not model.momentum_encoder.grad_checkpointing
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        load_config(None, ["model.arch=resnet18", "data.synthetic=true", "model.grad_checkpointing=true"],
                    method="mocov3")


def test_finetuning_checkpointing_replays_drop_path():
    """Drop path draws random numbers in each block: the recomputation must draw the same ones, or the
    gradients would belong to another network than the loss."""
    from transfer.classification.vit import build_vit_classifier, vit_arch

    arch = vit_arch("vit_pico_patch8")

    def build(checkpointing):
        return build_vit_classifier(arch, 4, img_size=32, global_pool="avg", drop_path=0.5,
                                    grad_checkpointing=checkpointing)

    imgs, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    same_loss_and_gradients(build, lambda m: m.blocks, imgs, lambda logits: nn.functional.cross_entropy(logits, target))
    model = build(False).train()  # the random paths matter: other draws, another loss
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(nn.functional.cross_entropy(model(imgs), target).item())
    assert losses[0] != losses[1]


def test_classification_config_turns_checkpointing_on_for_vits_only():
    from transfer.classification.config import load_cls_config
    from transfer.classification.protocols import protocol

    args = ["model.arch=mae_vit_pico_patch8", "data.img_size=32", "data.synthetic=true"]
    cfg = load_cls_config(None, [*args, "model.grad_checkpointing=true"], protocol="mae_finetune")
    model, _ = protocol("mae_finetune").build_model(cfg, 4)
    assert model.grad_checkpointing
    model, _ = protocol("mae_finetune").build_model(load_cls_config(None, args, protocol="mae_finetune"), 4)
    assert not model.grad_checkpointing
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        load_cls_config(None, ["model.arch=resnet18", "data.synthetic=true", "model.grad_checkpointing=true"],
                        protocol="moco_linear")


# ----------------------------------------------------------------- compile
@pytest.mark.slow
def test_compile_names_the_graph_breaks(caplog):
    from pretrain.trainer import compile_model

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            scale = y.abs().max().item()  # a Python number from a tensor: dynamo breaks the graph here
            return y / (1.0 + scale)

    torch.manual_seed(0)
    model, x = DataDependent(), torch.randn(3, 4)
    with caplog.at_level(logging.INFO, logger="pretrain.trainer"):
        compiled = compile_model(model)
        torch.testing.assert_close(compiled(x), model(x))
        compiled(x)  # logged once, at the first forward
    messages = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(messages) == 1 and "graph break" in messages[0] and "item" in messages[0], messages
    assert set(compiled.state_dict()) == {f"_orig_mod.{k}" for k in model.state_dict()}  # why the trainer saves
    # the uncompiled model


@pytest.mark.slow
def test_compiled_pretraining_matches_eager_and_resumes_exactly(tiny_mae_overrides, tmp_path, caplog):
    from pretrain.trainer import Trainer

    def train(out, *extra, resume=None):
        base = [o for o in tiny_mae_overrides if not o.startswith("train.output_dir")]
        trainer = Trainer(load_config(None, [*base, f"train.output_dir={tmp_path / out}", *extra]), resume=resume)
        trainer.fit()
        return trainer

    def losses(out):
        return [json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    eager = train("eager")
    with caplog.at_level(logging.INFO, logger="pretrain.trainer"):
        compiled = train("compiled", "train.compile=true")
    assert type(compiled.ddp).__name__ == "OptimizedModule"  # the flag compiled the module the loss runs through
    assert any("torch.compile" in r.getMessage() for r in caplog.records)  # graph breaks (or none) logged
    assert len(losses("compiled")) == 8
    # The same masks (random numbers as eager draws them) and the same arithmetic up to fusion.
    torch.testing.assert_close(losses("compiled"), losses("eager"), rtol=1e-4, atol=1e-5)
    # The checkpoints keep the authors' names: no ``_orig_mod.`` from the compiled wrapper.
    keys = set(load_file(tmp_path / "compiled" / "checkpoint-last.pth")["model"])
    assert keys == set(load_file(tmp_path / "eager" / "checkpoint-last.pth")["model"])
    assert not any("_orig_mod" in k for k in keys)
    # Stopped after step 3 and resumed: the same run as the uninterrupted compiled one, exactly.
    train("resumed", "train.compile=true", "train.max_iters=3")
    resumed = train("resumed", "train.compile=true", resume="auto")
    assert losses("resumed") == losses("compiled")
    for (k, a), (_, b) in zip(compiled.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    for (k, a), (_, b) in zip(eager.model.state_dict().items(), compiled.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=k)


def same_loss_and_gradients(build, blocks, inputs, loss_fn):
    """Builds the plain and the checkpointed module (``build(checkpointing)``, the same weights), runs
    ``loss_fn(module(inputs))`` and backward on each under the same seed (drop path draws), and checks that
    the checkpointed one recomputes every block and gets the same loss and gradients."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build(checkpointing)
        model.train()  # (mmengine's returns None)
        calls = count_block_calls(blocks(model))
        torch.manual_seed(1)
        loss = loss_fn(model(inputs))
        loss.backward()
        results.append((loss.detach(), grads(model), calls))
    (loss_p, grads_p, calls_p), (loss_c, grads_c, calls_c) = results
    assert calls_p == [1] * len(calls_p) and calls_c == [2] * len(calls_c)
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=0)
    assert grads_c.keys() == grads_p.keys() and grads_p
    for k in grads_p:
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.detectron2
def test_vitdet_use_act_checkpoint_runs_without_fairscale():
    """The ViTDet configs' ``model.backbone.net.use_act_checkpoint=True`` (detectron2's own needs fairscale)."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import ViT

    from conftest import REPO

    cfg = LazyConfig.load(str(REPO / "configs/detectron2/COCO/mask_rcnn_vitdet_l_100ep.py"))
    cfg.model.backbone.net.update(img_size=64, embed_dim=48, depth=4, num_heads=3, drop_path_rate=0.3,
                                  window_size=2, window_block_indexes=[0, 2], pretrain_img_size=64)
    cfg.model.backbone.update(out_channels=16, square_pad=64)

    def build(checkpointing):
        c = LazyConfig.apply_overrides(copy.deepcopy(cfg), [f"model.backbone.net.use_act_checkpoint={checkpointing}"])
        backbone = instantiate(c.model.backbone)
        assert isinstance(backbone.net, ViT) and backbone.net.use_act_checkpoint == checkpointing
        return backbone

    same_loss_and_gradients(build, lambda m: m.net.blocks, torch.randn(2, 3, 64, 64),
                            lambda out: sum(f.pow(2).mean() for f in out.values()))


def test_mmseg_mae_encoder_with_cp():
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")
    from mmseg.models.backbones import MAE

    from transfer.segmentation.vit import MAEViTEncoder

    def build(with_cp):
        return MAEViTEncoder(img_size=32, patch_size=8, embed_dims=48, num_layers=4, num_heads=3,
                             out_indices=(1, 3), drop_path_rate=0.3, with_cp=with_cp)

    x = torch.randn(2, 3, 32, 32)
    same_loss_and_gradients(build, lambda m: m.layers, x, lambda outs: sum(o.pow(2).mean() for o in outs))
    encoder = build(False)
    encoder.eval()
    with torch.no_grad():  # the forward is mmseg's, with or without checkpointing
        for ours, theirs in zip(encoder(x), MAE.forward(encoder, x)):
            assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_compiled_finetuning_matches_eager(tmp_path):
    """``train.compile`` in the classification trainer: the compiled module is the one the loss runs through
    (drop path, mixup and all), its losses are eager's, its checkpoint the authors' layout."""
    from transfer.classification.config import load_cls_config
    from transfer.classification.engine import ClassificationTrainer

    def run(out, *extra):
        args = ["model.arch=mae_vit_pico_patch8", "model.drop_path=0.2", "data.synthetic=true",
                "data.synthetic_per_class=8", "data.img_size=32", "data.num_workers=0", "train.batch_size=8",
                "train.epochs=1", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
                "train.log_every=1", f"train.output_dir={tmp_path / out}", *extra]
        trainer = ClassificationTrainer(load_cls_config(None, args, protocol="mae_finetune"))
        trainer.fit()
        records = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return trainer, [r["loss"] for r in records if "loss" in r and "top1" not in r]

    eager, eager_losses = run("eager")
    compiled, compiled_losses = run("compiled", "train.compile=true")
    assert type(compiled.ddp).__name__ == "OptimizedModule" and type(compiled.model).__name__ == "VisionTransformer"
    assert len(eager_losses) >= 2
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
    keys = set(load_file(tmp_path / "compiled" / "checkpoint-last.pth")["model"])
    assert keys == set(eager.model.state_dict()) and not any("_orig_mod" in k for k in keys)


# ------------------------------------------------------------ channels_last
def test_channels_last_for_resnets_only():
    import torchvision

    from pretrain.methods.mae import create_mae
    from pretrain.methods.moco import build_moco
    from pretrain.trainer import use_channels_last

    cl = torch.channels_last
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = resnet(x)
    assert load_config(None, ["data.synthetic=true"]).train.channels_last  # on by default: faster (README)
    assert not use_channels_last(resnet, enabled=False) and resnet.conv1.weight.is_contiguous()
    assert use_channels_last(resnet, enabled=True)
    assert resnet.layer1[0].conv1.weight.is_contiguous(memory_format=cl) and not resnet.conv1.weight.is_contiguous()
    out = resnet(x)  # the activations follow the weights' layout
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # MoCo's single-process split batch norm views the maps as sub-batches: it keeps them contiguous.
    split = build_moco("resnet18", K=8, bn_splits=2)
    assert not use_channels_last(split, enabled=True) and split.encoder_q.conv1.weight.is_contiguous()
    assert use_channels_last(build_moco("resnet18", K=8, bn_splits=1), enabled=True)
    mae = create_mae("mae_vit_pico_patch8", **TINY_MAE)  # a ViT: nothing to gain, left alone
    assert not use_channels_last(mae, enabled=True) and mae.patch_embed.proj.weight.is_contiguous()


def test_moco_refuses_compile_with_the_reason():
    with pytest.raises(ConfigError, match="train.compile.*MoCo"):
        load_config(None, ["data.synthetic=true", "train.compile=true"], method="moco")
    assert load_config(None, ["data.synthetic=true", "train.compile=true"]).train.compile  # MAE compiles


@pytest.mark.slow
def test_frozen_rungs_compiled_forward_gives_the_eager_features(one_thread):
    """``--compile`` of the kNN / dense-probe tools: the frozen backbone's feature functions through
    torch.compile (dynamo traces them: its frame counter moves), the same features as eager."""
    from torch._dynamo.utils import counters

    from transfer.backbone import load_frozen_backbone

    torch.manual_seed(0)
    backbone = load_frozen_backbone(arch="mae_vit_pico_patch8")
    x = torch.randn(2, 3, 32, 32)
    eager_global, eager_dense = backbone.global_features(x), backbone.dense_features(x)
    frames = counters["stats"]["unique_graphs"]
    assert backbone.set_compile(True) is True
    compiled_global, compiled_dense = backbone.global_features(x), backbone.dense_features(x)
    assert counters["stats"]["unique_graphs"] > frames  # compiled, not run eagerly
    torch.testing.assert_close(compiled_global, eager_global, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_dense, eager_dense, rtol=1e-4, atol=1e-5)
    assert load_frozen_backbone(arch="mae_vit_pico_patch8").set_compile(False) is False
