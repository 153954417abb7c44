#!/usr/bin/env python
"""Pretrain a backbone with MAE or MoCo from a config.

  python tools/pretrain_net.py configs/pretrain/mae_vit_base_in1k.yaml data.path=/data/imagenet
  python tools/pretrain_net.py configs/pretrain/moco_v2_r50_in1k.yaml --resume        # newest checkpoint
  torchrun --nproc_per_node 8 tools/pretrain_net.py configs/pretrain/mae_vit_large_in1k.yaml
  python tools/pretrain_net.py --method mae train.device=cpu data.synthetic=true   # defaults, synthetic scenes

Overrides are ``section.key=value`` (e.g. ``train.epochs=10 optim.base_lr=1e-4``).
SIGTERM / Ctrl-C stop at the next step with a checkpoint that --resume continues.
"""
import argparse
import signal
import sys

from pretrain.config import ConfigError, load_config, to_yaml


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (method: mae | moco)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--method", choices=["mae", "moco"], help="method when no config file is given")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to resume from (default: the newest in train.output_dir)")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    args = p.parse_intermixed_args(argv)
    if args.resume and "=" in args.resume:  # `--resume a.b=c`: an override, not a path
        args.overrides.append(args.resume)
        args.resume = "auto"
    if args.config and "=" in args.config:  # no config file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        cfg = load_config(args.config, args.overrides, method=args.method)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if args.print_config:
        print(to_yaml(cfg))
        return
    from pretrain.trainer import Trainer
    from pretrain import distributed as du

    trainer = Trainer(cfg, resume=args.resume)
    signal.signal(signal.SIGTERM, trainer.request_stop)
    signal.signal(signal.SIGINT, trainer.request_stop)
    try:
        trainer.fit()
    finally:
        du.cleanup()


if __name__ == "__main__":
    main()
