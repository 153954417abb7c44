#!/usr/bin/env python
r"""A fine-tuned ImageNet classifier on ImageNet-A, -R, -Sketch and -C: MAE's robustness table (its Table 3).

  python tools/robustness_eval.py output/classification/mae_vit_base_finetune/checkpoint-last.pth \
      --data-root /data/imagenet-variants --out out/robustness
  python tools/robustness_eval.py mae_finetuned_vit_base.pth --data-root /data/imagenet-variants \
      --classes /data/imagenet/train --out out/robustness_authors      # the MAE authors' fine-tuned file

--data-root holds the variants it has, in their releases' folders (each one optional):
imagenet-a/<wnid>/*.jpg, imagenet-r/<wnid>/, imagenet-sketch/<wnid>/, imagenet-c/<corruption>/<1..5>/<wnid>/.
ImageNet-A and -R score top-1 over their 200 classes (the logits restricted to them, as their authors);
Sketch plain top-1 over the 1000; ImageNet-C the mean corruption error over its 15 corruptions x 5 severities,
normalised by AlexNet's errors (transfer/robustness.py). A wnid's class index is its rank in the classifier's
class list: --classes (a file of wnids in order, or ImageNet's train/ folder), else imagenet-sketch/'s class
folders, else an ImageNet-C set's. Images go through the classifier's own evaluation transform (its config's
img_size, crop_pct, interpolation). Writes <out>/results.json (task imagenet_robustness: in_a_top1, in_r_top1,
sketch_top1, in_c_mce, in_c_top1; each set's top-1 and each corruption's CE beside them) and log.txt.
"""
import argparse
import logging

log = logging.getLogger("robustness_eval")


def parse_args(argv=None):
    from pretrain.cli import non_negative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the fine-tuned classifier (tools/train_cls.py's checkpoint-last.pth, the MAE "
                                      "authors' fine-tuned file, a timm / DeiT ViT or torchvision ResNet classifier)")
    p.add_argument("--data-root", required=True, help="folder of the variants: imagenet-a/, imagenet-r/, "
                                                      "imagenet-sketch/, imagenet-c/ (those it has)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", help="the classifier's classes in its output order: a file of wnids (one a line) or a "
                                     "folder of class folders (ImageNet's train/); default: imagenet-sketch/'s folders")
    p.add_argument("--batch", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--num-workers", type=non_negative_int, default=8, help="data loading processes (default 8)")
    p.add_argument("--device", default="auto", help="cuda, cpu, cuda:1... (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16 autocast or fp32; auto (default): bf16 on a GPU with native bf16, on a CPU where it "
                        "measures faster, else fp32 (recorded in results.json)")
    p.add_argument("--seed", type=int, default=0, help="the classifier's fine-tuning seed, recorded in results.json "
                                                       "(the evaluation itself draws nothing)")
    p.add_argument("--pretrain", help="pretraining label for results.json (default: the classifier's record)")
    p.add_argument("--allow-pickle", action="store_true", help="open a checkpoint that holds pickled objects "
                                                               "(only for files you trust)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from pathlib import Path

    from pretrain.errors import DataError, InputNotFound
    from transfer import robustness as rb

    # The inputs before a model is built or a file written (a user error ends as one line: run_tool).
    root = Path(args.data_root)
    if not root.is_dir():
        raise InputNotFound(f"--data-root {root}: no such folder (expected one holding some of {rb.LAYOUT})")
    rb.variants_present(root)
    state_dict, record = rb.read_classifier(args.checkpoint, args.allow_pickle)
    wnids, source = rb.class_list(root, args.classes)
    outputs = rb.head_classes(state_dict)
    if outputs != len(wnids):
        raise DataError(f"{args.checkpoint} has {outputs} outputs but {source} names {len(wnids)} classes: give the "
                        "classifier's class list with --classes (ImageNet's train/ folder, or a file of its wnids)")
    from pretrain.backbones import read_backbone
    from transfer.classification.data import eval_transform

    export = read_backbone(dict(state_dict), path=str(args.checkpoint))  # its shape, read off its tensors
    cfg = rb.classifier_config(record, args.checkpoint, export, state_dict)
    sets = rb.eval_sets(root, wnids, source, eval_transform(cfg.data),
                        bad_list=str(Path(args.out) / "unreadable_images.txt"))
    classifier = rb.build_classifier(args.checkpoint, state_dict, record, export, cfg)
    del state_dict, export
    run(args, classifier, sets, source)


def run(args, classifier, sets, source):
    import torch

    from pretrain.logger import setup_logging
    from pretrain.precision import autocast_dtype, matmul_shapes
    from transfer import robustness as rb
    from transfer.results import write_results

    setup_logging(args.out)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model = classifier.model.to(device)
    amp = autocast_dtype({"fp32": "none"}.get(args.precision, args.precision), device, matmul_shapes(model),
                         setting="--precision")
    d = classifier.cfg.data
    log.info("%s (%s, %d classes from %s) on %d sets under %s, %d px, device %s, %s", args.checkpoint,
             classifier.backbone, classifier.num_classes, source, len(sets), args.data_root, d.img_size, device,
             amp or "fp32")
    metrics, details = rb.evaluate(model, sets, device, args.batch, args.num_workers, amp)
    recipe = {"img_size": d.img_size, "crop_pct": d.crop_pct, "interpolation": d.interpolation,
              "protocol": classifier.cfg.protocol, "precision": str(amp or "fp32").replace("torch.", ""),
              "seed": args.seed}
    if classifier.finetune_epochs:
        recipe["epochs"] = classifier.finetune_epochs  # the fine-tuning's: the published rows' recipes say it
    if classifier.pretrain_epochs:
        recipe["pretrain_epochs"] = classifier.pretrain_epochs
    if classifier.cfg.model.get("variant"):  # the network of the pretraining checkpoint it was fine-tuned from
        recipe["variant"] = classifier.cfg.model.variant
    path = write_results(args.out, task=rb.TASK, backbone=classifier.backbone,
                         pretrain=args.pretrain or classifier.pretrain, metrics=metrics, recipe=recipe,
                         checkpoint=classifier.pretrained_checkpoint, classifier=str(args.checkpoint),
                         tool="tools/robustness_eval.py", seed=args.seed, data_root=str(args.data_root),
                         classes=source, sets=details)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if v is not None)
    log.info("%s  ->  %s", shown, path)
    return path


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
