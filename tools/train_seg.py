#!/usr/bin/env python
"""Train and evaluate a semantic segmentation transfer with mmsegmentation (mmengine's Runner).

  python tools/train_seg.py configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py \\
      --checkpoint mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016
  torchrun --nproc_per_node 8 tools/train_seg.py configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py
  torchrun --nproc_per_node 4 tools/train_seg.py configs/mmseg/upernet_r50-moco_4xb4-80k_ade20k-512x512.py \\
      --checkpoint moco_v2_800ep_pretrain.pth.tar
  python tools/train_seg.py CONFIG --resume                 # continue the newest checkpoint of the output folder
  python tools/train_seg.py CONFIG --eval-only --resume iter_160000.pth    # evaluate a trained segmentor
  python tools/train_seg.py configs/mmseg/tiny/upernet_r18_folder-64x64.py --data-root DIR --random-init \\
      --max-iters 60 --output-dir work_dirs/seg_tiny
  torchrun --nproc_per_node 8 tools/train_seg.py configs/mmseg/upernet_timm-vit-b_8xb2-amp-160k_ade20k-512x512.py \\
      --checkpoint dinov2_vitl14_reg4_pretrain.pth        # a published ViT: the config fitted to the file
  python tools/train_seg.py CONFIG --checkpoint dino_checkpoint.pth --variant student

--checkpoint takes the pretrained backbone in any layout the encoders read (the
authors' MAE / MoCo files, the project's checkpoints, timm / torchvision files,
files converted by tools/convert_checkpoint.py --to mmseg) and prints what was
loaded, left out by design, or mismatched (an error). A MAETimmViT config (the published
ViTs mmseg's MAE backbone cannot hold) is fitted to the checkpoint's ViT before the
build: its width in the backbone, neck and heads, the maps at the same relative depths,
the layer decay over its blocks; each change is printed and kept in the config the run
records (sslkit_fitted_to_checkpoint). --variant picks the network of a checkpoint
holding several (DINO / iBOT / DINOv2 teacher or student, I-JEPA target or context)
and is recorded in results.json. --cfg-options takes mmengine's
``key=value`` overrides (e.g. ``train_dataloader.batch_size=8 optim_wrapper.optimizer.lr=2e-4``).
Writes mIoU / mAcc / aAcc and the recipe to <output-dir>/results.json. On a CPU
the GPU recipe falls back to BN and fp32. --output-dir, --max-iters, --resume and --eval-only are
the flags every training tool shares (pretrain.cli); --work-dir and --iters still work.
"""
import argparse
import os
from pathlib import Path


def cfg_option(text: str) -> str:
    """An argparse ``type`` for a --cfg-options item: ``key=value``, checked where it is parsed."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. train_dataloader.batch_size=8), got {text!r}")
    return text


def label_value(text: str) -> int:
    """An argparse ``type`` for a label value of a PNG label map (0..255)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a label value 0..255, got {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"expected a label value 0..255, got {value}")
    return value


def parse_args(argv=None):
    from mmengine.config import DictAction

    from pretrain.cli import add_run_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmseg config (configs/mmseg/...)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, type=cfg_option,
                   help="key=value config overrides (mmengine syntax: a.b=1 c=[1,2])")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--checkpoint", help="pretrained backbone weights (sets model.backbone.init_cfg)")
    init.add_argument("--random-init", action="store_true", help="train the backbone from random initialisation")
    p.add_argument("--variant", help="which network of a checkpoint that holds several: DINO / iBOT / DINOv2 teacher "
                                     "(default) or student, I-JEPA target (default) or context (sets "
                                     "model.backbone.variant)")
    p.add_argument("--pretrain", help="pretraining label for results.json (default: 'random' without a "
                                      "checkpoint, the version a MoCo checkpoint states, else the config's)")
    p.add_argument("--data-root", help="dataset root for every split (ADE20K: the ADEChallengeData2016 folder)")
    p.add_argument("--classes", help="SegFolderDataset class list: a file (one name a line) or 'a,b,c'")
    p.add_argument("--ignore-label", type=label_value, nargs="+",
                   help="SegFolderDataset label values to ignore (e.g. 11)")
    add_run_args(p, output_dir="logs, checkpoints and results.json (sets work_dir; default: work_dirs/<config name>)",
                 max_iters="train N iterations, the schedule scaled to match (sets train_cfg.max_iters)",
                 resume="continue a run: auto = the newest checkpoint in the output folder, or PATH; "
                        "with --eval-only, the trained segmentor to evaluate",
                 eval_only="evaluate a trained segmentor and write results",
                 output_dir_aliases=["--work-dir"], max_iters_aliases=["--iters"])
    p.add_argument("--print-config", action="store_true", help="print the final config and exit")
    return p.parse_args(argv)


def build_config(args):
    from mmengine.logging import print_log

    from transfer.segmentation.runner import (
        adapt_to_device, fit_to_checkpoint, load_seg_config, match_input_normalisation, match_num_classes,
        merge_overrides, set_backbone_checkpoint, set_data, set_iterations, set_variant,
    )
    import torch

    cfg = load_seg_config(args.config)
    cfg.work_dir = args.output_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(args.config).stem)
    if args.checkpoint:
        set_backbone_checkpoint(cfg, args.checkpoint)
    elif args.random_init:
        set_backbone_checkpoint(cfg, None)
    set_variant(cfg, args.variant)
    # Before the overrides: an explicit width, out_indices, mean / std wins.
    fitted = fit_to_checkpoint(cfg)
    normalisation = match_input_normalisation(cfg)
    fitted += [normalisation] if normalisation else []
    for note in fitted:
        print_log(f"fitted to the checkpoint: {note}", logger="current")
    if fitted:  # in the config the Runner writes to the work dir
        cfg.sslkit_fitted_to_checkpoint = fitted
    classes = args.classes
    if classes and not Path(classes).is_file():
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    set_data(cfg, args.data_root, classes, args.ignore_label)
    match_num_classes(cfg)
    if args.max_iters:
        set_iterations(cfg, args.max_iters)
    merge_overrides(cfg, args.cfg_options)  # last: explicit overrides win over the flags above
    cfg.launcher = "pytorch" if "LOCAL_RANK" in os.environ else "none"  # torchrun sets it
    changes = adapt_to_device(cfg, torch.cuda.is_available())
    return cfg, changes


def check_inputs(args, cfg):
    """What the run reads, checked before the Runner creates the work dir and its logs: the data of every
    split it uses, the checkpoint it starts from (the backbone's, or the segmentor to resume / evaluate)."""
    from pretrain.errors import ConfigError
    from transfer.segmentation.runner import backbone_checkpoint, check_checkpoint, check_data

    if cfg.model.backbone.get("type") == "MAETimmViT" and not backbone_checkpoint(cfg):  # its shape is the file's
        raise ConfigError(f"{args.config} builds the network of its backbone checkpoint (MAETimmViT): give "
                          f"--checkpoint PATH (the pretrained file: a DINOv2, CLIP, BEiT, ... ViT)")
    check_data(cfg, ("test",) if args.eval_only else ("train", "val", "test"))
    if cfg.load_from:
        check_checkpoint(cfg.load_from, "--resume" if args.resume else "the config's load_from")
    if not args.eval_only and backbone_checkpoint(cfg):  # an evaluation loads the trained segmentor only
        check_checkpoint(backbone_checkpoint(cfg), "--checkpoint" if args.checkpoint else
                         "the config's model.backbone.init_cfg: give --checkpoint PATH, or --random-init")


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.dist import get_rank, get_world_size
    from mmengine.logging import print_log
    from mmengine.runner import Runner, find_latest_checkpoint

    from pretrain.errors import InputNotFound
    from transfer.segmentation.checkpoint import mmengine_checkpoint_globals
    from transfer.segmentation.runner import CPURunner, SegResultsHook, trained_record, write_seg_results

    if args.checkpoint and not Path(args.checkpoint).is_file():  # first: the config's checks name other files
        raise InputNotFound(f"checkpoint not found: {args.checkpoint} (--checkpoint)")
    cfg, changes = build_config(args)
    if args.print_config:
        print(cfg.pretty_text)
        return
    if args.eval_only:
        target = args.resume if args.resume not in (None, "auto") else find_latest_checkpoint(cfg.work_dir)
        if not target:
            raise InputNotFound(f"--eval-only needs a trained segmentor: --resume CKPT, or a checkpoint in "
                                f"{cfg.work_dir}")
        cfg.load_from, cfg.resume = target, False
    elif args.resume:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume  # None: the work dir's last_checkpoint
    check_inputs(args, cfg)

    cuda = torch.cuda.is_available()
    if cfg.launcher == "pytorch" and not cuda:
        # mmengine's own init_dist calls torch.cuda.set_device; on CPUs the process group is ours.
        torch.distributed.init_process_group("gloo")
    runner = (Runner if cuda else CPURunner).from_cfg(cfg)
    for change in changes:
        print_log(f"no GPU: {change}", logger="current")
    # --eval-only: what was trained is read from the checkpoint's meta (this config's values otherwise).
    trained = trained_record(cfg, get_world_size(), pretrain=args.pretrain,
                             inspect_checkpoint=get_rank() == 0 and not args.eval_only)
    hook = SegResultsHook(trained, from_checkpoint=args.eval_only)
    runner.register_hook(hook)
    with mmengine_checkpoint_globals():
        if args.eval_only:
            metrics = runner.test()
        else:
            runner.train()
            # The last validation is the final evaluation when it ran at the last iteration.
            metrics = hook.metrics if hook.iter == runner.max_iters and hook.metrics else runner.test()
    if get_rank() == 0:
        model_ckpt = cfg.load_from if args.eval_only else find_latest_checkpoint(cfg.work_dir)
        path = write_seg_results(cfg, metrics, hook.trained, segmentor_checkpoint=model_ckpt)
        summary = "  ".join(f"{k} {metrics[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc"))
        print_log(f"{summary}  ->  {path}", logger="current")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
