#!/usr/bin/env python
"""Pretrain a backbone with MAE or MoCo from a config.

  python tools/pretrain_net.py configs/pretrain/mae_vit_base_in1k.yaml data.path=/data/imagenet
  python tools/pretrain_net.py configs/pretrain/moco_v2_r50_in1k.yaml --resume        # newest checkpoint
  torchrun --nproc_per_node 8 tools/pretrain_net.py configs/pretrain/mae_vit_large_in1k.yaml
  python tools/pretrain_net.py --method mae train.device=cpu data.synthetic=true   # defaults, synthetic scenes

Overrides are ``section.key=value`` (e.g. ``train.epochs=10 optim.base_lr=1e-4``).
SIGTERM / Ctrl-C stop at the next step with a checkpoint that --resume continues. The run flags
are those every training tool shares (pretrain.cli), less --eval-only: pretraining has no evaluation
of its own (tools/evaluate.py measures a checkpoint).
"""
import argparse
import signal

from pretrain.cli import add_run_args, resume_override, run_overrides
from pretrain.config import load_config, to_yaml
from pretrain.methods import methods


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (method: a registered pretraining method)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--method", choices=sorted(methods()), help="method when no config file is given")
    add_run_args(p, output_dir="checkpoints and logs (sets train.output_dir)",
                 max_iters="stop after N optimizer steps, with a checkpoint --resume continues (sets train.max_iters)",
                 resume="continue a run: auto = the newest checkpoint in the output folder, or PATH")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    args = p.parse_intermixed_args(argv)
    args.resume, taken = resume_override(args.resume)
    args.overrides += taken + run_overrides(args)
    if args.config and "=" in args.config:  # no config file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, args.overrides, method=args.method)  # a ConfigError is the user's: run_tool
    if args.print_config:
        print(to_yaml(cfg))
        return
    from pretrain.trainer import Trainer
    from pretrain import distributed as du

    try:
        trainer = Trainer(cfg, resume=args.resume)  # checks the data before it builds the model
        signal.signal(signal.SIGTERM, trainer.request_stop)
        signal.signal(signal.SIGINT, trainer.request_stop)
        trainer.fit()
    finally:
        du.cleanup()


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
