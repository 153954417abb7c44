#!/usr/bin/env python
r"""Evaluate a pretrained backbone by ImageNet-protocol classification (config: protocol).

  python tools/train_cls.py configs/classification/mae_vit_pico_linear_cpu.yaml --checkpoint CKPT   # CPU, synthetic
  torchrun --nproc_per_node 8 tools/train_cls.py configs/classification/mae_vit_base_finetune.yaml \
      --checkpoint mae_pretrain_vit_base.pth data.path=/data/imagenet train.accum_iter=4
  python tools/train_cls.py configs/classification/moco_r50_linear.yaml --checkpoint moco_v2_800ep_pretrain.pth.tar \
      data.path=/data/imagenet
  python tools/train_cls.py configs/classification/moco_r50_linear.yaml data.path=/data/imagenet \
      --output-dir output/classification/moco_r50_linear --resume      # the newest checkpoint there
  python tools/train_cls.py configs/classification/mae_vit_base_finetune.yaml data.path=/data/imagenet \
      --eval-only --resume mae_finetuned_vit_base.pth

Protocols: mae_linear (frozen ViT, BN + linear head, LARS), mae_finetune (layer-wise lr decay,
RandAugment, mixup / cutmix), moco_linear (frozen ResNet, fc, SGD lr 30). Overrides are
``section.key=value``; --checkpoint sets model.checkpoint (the pretrained weights), --output-dir
train.output_dir, --max-iters train.max_iters (the flags every training tool shares: pretrain.cli).
Writes top-1 / top-5 to <train.output_dir>/results.json (--eval-only beside a training run's: to
results_eval.json, leaving the run's record), under the protocol's ImageNet task or data.task for another
dataset (inat2018_finetune: configs/classification/mae_vit_*_finetune_inat2018.yaml). SIGTERM / Ctrl-C
stop at the next step with a checkpoint that --resume continues; --resume without --checkpoint takes it
from the run's saved config.yaml.
"""
import argparse
import signal

from pretrain.cli import add_run_args, resume_override, run_overrides
from transfer.classification.config import PROTOCOL_SCHEMAS, load_cls_config, to_yaml


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (protocol: mae_linear | mae_finetune | moco_linear)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--protocol", choices=sorted(PROTOCOL_SCHEMAS), help="protocol (default: the config's)")
    p.add_argument("--checkpoint", help="pretrained backbone weights (sets model.checkpoint)")
    p.add_argument("--variant", help="which network of a checkpoint that holds several: DINO / iBOT / DINOv2 teacher "
                                     "(default) or student, I-JEPA target (default) or context (sets model.variant)")
    add_run_args(p, output_dir="checkpoints, logs and results.json (sets train.output_dir)",
                 max_iters="stop after N optimizer steps, with a checkpoint --resume continues (sets train.max_iters)",
                 resume="continue a run: auto = the newest checkpoint in the output folder, or PATH; "
                        "with --eval-only, the classifier to evaluate",
                 eval_only="evaluate a trained classifier and write results")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    args = p.parse_intermixed_args(argv)  # options may come between the overrides
    if args.config and "=" in args.config:  # no config file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    args.resume, taken = resume_override(args.resume)
    overrides = [*args.overrides, *taken, *run_overrides(args)] + (
        [f"model.checkpoint={args.checkpoint}"] if args.checkpoint else []) + (
        [f"model.variant={args.variant}"] if args.variant else [])
    cfg = load_cls_config(args.config, overrides, protocol=args.protocol)  # a ConfigError is the user's: run_tool
    if args.print_config:
        print(to_yaml(cfg))
        return
    from pretrain import distributed as du
    from transfer.classification.engine import ClassificationTrainer

    try:
        trainer = ClassificationTrainer(cfg, resume=args.resume, eval_only=args.eval_only)  # checks the data first
        if args.eval_only:
            trainer.run_eval_only()
            return
        signal.signal(signal.SIGTERM, trainer.request_stop)
        signal.signal(signal.SIGINT, trainer.request_stop)
        trainer.fit()
    finally:
        du.cleanup()


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
