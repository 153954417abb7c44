#!/usr/bin/env python
r"""Frozen dense probe: DINOv2's linear semantic segmentation (BN + 1x1 conv on the frozen last-layer
features), mIoU / mAcc / aAcc on the validation split (transfer/dense_probe.py has the protocol).

  python tools/dense_probe.py mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016 --out out/probe
  python tools/dense_probe.py moco_v2_800ep_pretrain.pth.tar --data-root ADE --out out/probe_r50 --resume
  python tools/dense_probe.py --random-init vit_base_patch16 --data-root ADE --out out/probe_random --seed 1
  python tools/dense_probe.py CKPT --dataset folder --data-root DIR --crop 128 --iters 300 --out out/probe_folder

Writes <out>/results.json (task ade20k_dense_probe or dense_probe), metrics.jsonl (training loss and lr per
step, validation metrics per evaluation), log.txt and probe_last.pth (head, optimizer, step, RNG),
written at every evaluation, on SIGTERM / Ctrl-C and at the end. --resume continues it (and starts
afresh when there is none); a folder with a finished run of the same settings is reported without
training again; --fresh discards what the folder holds.
"""
import argparse
import signal


def parse_args(argv=None):
    from pretrain.cli import non_negative_int, positive_float, positive_int
    from transfer.backbone import add_backbone_args, check_backbone_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(p)
    p.add_argument("--data-root", required=True,
                   help="ADE20K: the ADEChallengeData2016 folder; folder: the one holding images/, labels/ "
                        "and classes.txt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", choices=("ade20k", "folder"), default="ade20k")
    p.add_argument("--classes", help="folder dataset: class list file or 'a,b,c' (default <data-root>/classes.txt)")
    p.add_argument("--iters", type=positive_int, default=2000, help="training iterations (default 2000)")
    p.add_argument("--batch", type=positive_int, default=8, help="crops per iteration (default 8)")
    p.add_argument("--crop", type=positive_int, default=512, help="training crop and test short side, px (default 512)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=non_negative_int, default=500,
                   help="evaluate and checkpoint every N iterations (0: at the end only; default 500)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from probe_last.pth")
    p.add_argument("--fresh", action="store_true",
                   help="discard the run in --out (results.json, probe_last.pth, metrics.jsonl)")
    p.add_argument("--stop-after", type=positive_int, metavar="N",
                   help="stop after N iterations with a checkpoint that --resume continues "
                        "(the schedule spans --iters)")
    args = p.parse_args(argv)
    check_backbone_args(p, args)
    if args.resume and args.fresh:
        p.error("--resume and --fresh exclude each other")
    return args


def main(argv=None):
    args = parse_args(argv)
    from pretrain.logger import setup_logging
    from transfer.dense_probe import DenseProbe, ProbeConfig

    setup_logging()  # the console only: nothing is written before the inputs are checked
    cfg = ProbeConfig(
        data_root=args.data_root, out=args.out, checkpoint=args.checkpoint, random_init=args.random_init,
        dataset=args.dataset, classes=args.classes, iters=args.iters, batch=args.batch, crop=args.crop, lr=args.lr,
        seed=args.seed, eval_every=args.eval_every, num_workers=args.num_workers, pretrain=args.pretrain,
        allow_pickle=args.allow_pickle, variant=args.variant, device=args.device, stop_after=args.stop_after, precision=args.precision,
        compile=args.compile)
    probe = DenseProbe(cfg, resume=args.resume, fresh=args.fresh)
    probe.check()  # the output folder's run, the data, the checkpoint: a user error here leaves no file
    setup_logging(args.out)
    signal.signal(signal.SIGTERM, probe.request_stop)
    signal.signal(signal.SIGINT, probe.request_stop)
    probe.run()


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
