#!/usr/bin/env python
"""Train and evaluate a detectron2 detection recipe; writes results.json (COCO box / mask AP, VOC AP).

  # ViTDet-B Mask R-CNN on COCO from a MAE checkpoint (the authors' or the project's), 8 GPUs
  python tools/train_net.py --config-file configs/detectron2/COCO/mask_rcnn_vitdet_b_100ep.py --num-gpus 8 \\
      --checkpoint output/mae_vit_base_in1k/checkpoint-799.pth
  # MoCo R50-C4 on VOC07+12, 2 machines x 8 GPUs (run on each with its --machine-rank)
  python tools/train_net.py --config-file configs/detectron2/VOC/faster_rcnn_R_50_C4_24k_moco.py \\
      --num-gpus 8 --num-machines 2 --machine-rank 0 --dist-url tcp://host:port \\
      --checkpoint moco_v2_800ep_pretrain.pth.tar --output-dir output/det/voc_r50_c4_moco
  # the same recipe from the MoCo authors' own yacs file (their repository's detection/configs/)
  python tools/train_net.py --config-file moco/detection/configs/pascal_voc_R_50_C4_24k_moco.yaml \\
      --num-gpus 8 MODEL.WEIGHTS moco_v2_800ep_pretrain.pth.tar
  # a CPU-sized run on your own COCO-format data, registered by path
  python tools/train_net.py --config-file configs/detectron2/tiny/mask_rcnn_vitdet_pico.py \\
      --checkpoint mae_pico.pth --train-json data/annotations/instances_train.json \\
      --test-json data/annotations/instances_val.json --max-iters 40 --output-dir output/det_tiny

The recipes are LazyConfigs (configs/detectron2/); yacs files run too, for the MoCo authors' ResNet-C4
recipes users hold (their Res5ROIHeadsExtraNorm head is registered here). Config overrides follow the
options: ``key=value`` for LazyConfigs (``train.max_iter=1000``), ``KEY VALUE`` pairs for yacs configs
(``SOLVER.MAX_ITER 1000``); a dataset name there may be a registered one or a COCO json path
(``annotations.json[:image_folder]``). --output-dir, --max-iters, --resume and --eval-only are the
flags every training tool shares (pretrain.cli); --max-iter still works. The initial checkpoint may be
any checkpoint ``tools/convert_checkpoint.py --to detectron2`` reads (MAE, MoCo, timm, DeiT,
torchvision) or a detectron2 file; it is converted in memory and placed strictly. Pickled files
beyond tensors / numpy arrays are refused unless --allow-pickle (only for files you trust).
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.cli import add_run_args, is_key_value, resume_override  # noqa: E402

YACS_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")  # SOLVER.MAX_ITER


def is_override(value: str) -> bool:
    """An override ``--resume`` took for a path: ``key=value`` (LazyConfig), or a yacs key of a ``KEY VALUE`` pair."""
    return is_key_value(value) or bool(YACS_KEY.fullmatch(value))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="LazyConfig (.py) or yacs config (.yaml)")
    add_run_args(p, output_dir="checkpoints, logs and results.json (sets train.output_dir / OUTPUT_DIR)",
                 max_iters="train N iterations, ending with a checkpoint (sets train.max_iter / SOLVER.MAX_ITER)",
                 resume="continue a run: auto = the last checkpoint in the output folder, or PATH (a training "
                        "checkpoint of this tool); with --eval-only, the checkpoint to evaluate",
                 eval_only="evaluate the initial checkpoint (with --resume, the resumed one) and write results",
                 max_iters_aliases=["--max-iter"])
    init = p.add_mutually_exclusive_group()
    init.add_argument("--checkpoint", help="initial weights (train.init_checkpoint / MODEL.WEIGHTS): a pretraining "
                                           "checkpoint or a detectron2 file (default: the config's)")
    init.add_argument("--random-init", action="store_true", help="start from random initialisation")
    p.add_argument("--train-json", help="training set: a COCO-format json (registered by path)")
    p.add_argument("--train-images", help="its image folder (default: found from the COCO layout)")
    p.add_argument("--test-json", help="evaluation set: a COCO-format json (registered by path)")
    p.add_argument("--test-images", help="its image folder (default: found from the COCO layout)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: the config's, CPU when no GPU)")
    p.add_argument("--pretrain", default=None, help="label for the results file (default: read off the checkpoint; "
                                                    "'random' without one)")
    p.add_argument("--allow-pickle", action="store_true", help="trust the checkpoint files' pickled objects")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    p.add_argument("--dist-url", default="auto", help="tcp://host:port of the rank-0 machine (multi-machine)")
    p.add_argument("--reference-world-size", type=int, default=0,
                   help="the GPUs the recipe's batch, lr and schedule are for: on another number, scaled by "
                        "detectron2's rule (transfer.detection.scaling; the ladder's use); 0: as the config says")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = p.parse_args(argv)
    args.resume, taken = resume_override(args.resume, is_override)
    args.opts = taken + args.opts
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        p.error(f"--resume: checkpoint not found: {args.resume}")
    args.train_datasets = dataset_spec(p, args.train_json, args.train_images, "train")
    args.test_datasets = dataset_spec(p, args.test_json, args.test_images, "test")
    return args


def dataset_spec(parser, json_file, images, flag):
    if images and not json_file:
        parser.error(f"--{flag}-images needs --{flag}-json")
    return None if not json_file else [f"{json_file}:{images}" if images else str(json_file)]


def load_recipe(args):
    """The config with its overrides, then the settings of the options."""
    from transfer.detection.engine import Recipe

    return Recipe.load(args.config_file, args.opts, init_checkpoint="" if args.random_init else args.checkpoint,
                       output_dir=args.output_dir, max_iter=args.max_iters, train_datasets=args.train_datasets,
                       test_datasets=args.test_datasets, device=args.device)


def finished_run(args, output_dir: str):
    """The results file of an earlier run in ``output_dir`` when that folder is a default one (neither
    --output-dir nor an output override named it) and this run would write over it (no --resume); else None."""
    named = args.output_dir is not None or any(o.startswith("train.output_dir=") or o == "OUTPUT_DIR"
                                               for o in args.opts)
    if named or args.resume:
        return None
    found = sorted(Path(output_dir).glob("results.json")) + sorted(Path(output_dir).glob("eval/*/results.json"))
    return str(found[0]) if found else None


def main(args):
    import logging

    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.detection.engine import evaluate_checkpoint, train
    from transfer.detection.scaling import scale_to_world_size

    try:
        recipe = load_recipe(args)
        scaled = scale_to_world_size(recipe, args.reference_world_size, comm.get_world_size())
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e}")
    if scaled:
        recipe.notes.append(scaled)
    finished = finished_run(args, recipe.output_dir)
    if finished:
        sys.exit(f"error: the default output folder {recipe.output_dir} already holds an earlier run's results "
                 f"({finished}); pass --output-dir DIR for a new run, or --resume to continue that one")
    default_setup(recipe.cfg, args)
    for note in recipe.notes:
        logging.getLogger("detectron2").warning(note)
    run = evaluate_checkpoint if args.eval_only else train
    try:
        return run(recipe, resume=args.resume, allow_pickle=args.allow_pickle, pretrain=args.pretrain)
    except CheckpointFormatError as e:
        sys.exit(f"error: {e}")


def cli(argv=None):
    args = parse_args(argv)
    from transfer.detection import require_detectron2

    try:
        require_detectron2()
    except ImportError as e:
        sys.exit(f"error: {e}")
    from detectron2.engine import launch

    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
