#!/usr/bin/env python
r"""Weighted k-NN classification on frozen global features (Wu et al. 2018; k = 20, T = 0.07 as DINO).

  python tools/knn_eval.py mae_pretrain_vit_base.pth --train /data/imagenet/train --val /data/imagenet/val --out out/knn
  python tools/knn_eval.py moco_v2_800ep_pretrain.pth.tar --train DIR --val DIR --out out/knn_moco
  python tools/knn_eval.py --random-init resnet50 --seed 1 --train DIR --val DIR --out out/knn_random

Features: the ViT's cls token after the final norm, the ResNet's pooled res5 (transfer.backbone), of
images resized to img_size / 0.875 and centre-cropped to img_size, L2-normalised; the backbone runs under
bf16 autocast where --precision (default auto) says so, the features and votes in fp32. Each validation
image's k most similar training images vote for their class with weight exp(cos / T)
(pretrain.knn). --train and --val are labelled folders (<dir>/<class>/*) with the same classes.
Writes top-1 / top-5 (%) to <out>/results.json (task knn) and log.txt.
"""
import argparse
import logging

TASK = "knn"
log = logging.getLogger("knn_eval")


def parse_args(argv=None):
    from pretrain.cli import positive_float, positive_int
    from transfer.backbone import add_backbone_args, check_backbone_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(p)
    p.add_argument("--train", required=True, help="labelled training folder <dir>/<class>/*")
    p.add_argument("--val", required=True, help="labelled validation folder, the same classes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=positive_int, default=20, help="neighbours (default 20)")
    p.add_argument("--temperature", type=positive_float, default=0.07, help="vote weight exp(cos / T) (default 0.07)")
    p.add_argument("--img-size", type=positive_int, default=224, help="centre crop, px (default 224)")
    p.add_argument("--batch", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seeds torch: the random init of --random-init")
    args = p.parse_args(argv)
    check_backbone_args(p, args)
    return args


def load_backbone(args):
    """The frozen backbone the arguments name (a checkpoint, or --random-init seeded by --seed)."""
    import torch

    from transfer.backbone import load_frozen_backbone

    torch.manual_seed(args.seed)
    return load_frozen_backbone(args.checkpoint, args.random_init, args.allow_pickle, args.variant)


def knn_eval(args, backbone=None, folders=None):
    """Extract, vote, write results.json; returns its path. ``backbone`` and ``folders`` (``load_backbone``'s,
    ``labelled_folders``'), where read already."""
    import torch

    from pretrain.knn import knn_evaluate, labelled_folders
    from transfer.results import write_results

    if folders is None:
        folders = labelled_folders(args.train, args.val, args.img_size)
    counts = {"train": len(folders[0]), "val": len(folders[1])}
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    backbone = (load_backbone(args) if backbone is None else backbone).to(device)
    if backbone.report is not None:
        log.info("pretrained weights (%s):\n%s", backbone.pretrain, backbone.report.format())
    precision = backbone.set_precision(args.precision, device)
    compiled = backbone.set_compile(args.compile)
    log.info("kNN: %s (%s), k=%d, T=%g, %d px; %d train / %d val images, device %s, %s", backbone.name,
             args.pretrain or backbone.pretrain, args.k, args.temperature, args.img_size, counts["train"],
             counts["val"], device, precision)
    accuracy = knn_evaluate(backbone.global_features, args.train, args.val, args.img_size, args.batch, device,
                            k=args.k, temperature=args.temperature, num_workers=args.num_workers,
                            mean=backbone.mean, std=backbone.std)  # as the backbone was trained (CLIP's, ...)
    recipe = {"k": args.k, "temperature": args.temperature, "img_size": args.img_size,
              "train_images": counts["train"], "val_images": counts["val"], "seed": args.seed, "precision": precision,
              "compile": compiled, "mean": list(backbone.mean), "std": list(backbone.std)}
    if backbone.pretrain_epochs:
        recipe["pretrain_epochs"] = backbone.pretrain_epochs
    if args.variant:
        recipe["variant"] = args.variant  # which network of the checkpoint
    path = write_results(args.out, task=TASK, backbone=backbone.name, pretrain=args.pretrain or backbone.pretrain,
                         metrics={"top1": accuracy["top1"], "top5": accuracy.get("top5")},  # no top-5 under 5 classes
                         recipe=recipe, checkpoint=args.checkpoint, tool="tools/knn_eval.py", seed=args.seed,
                         train=args.train, val=args.val)
    log.info("top1 %.2f  top5 %s  ->  %s", accuracy["top1"],
             f"{accuracy['top5']:.2f}" if "top5" in accuracy else "-", path)
    return path


def main(argv=None):
    args = parse_args(argv)
    from pretrain.knn import labelled_folders
    from pretrain.logger import setup_logging

    # The inputs before anything is written (a user error ends as one line: run_tool): the folders, the weights.
    folders = labelled_folders(args.train, args.val, args.img_size)
    backbone = load_backbone(args)
    setup_logging(args.out)
    knn_eval(args, backbone, folders)


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
