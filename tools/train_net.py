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
(``annotations.json[:image_folder]``), an LVIS json (``lvis:JSON[:IMAGE_ROOT]``) or a Cityscapes folder
(``cityscapes:ROOT:SPLIT``), as --train-dataset / --test-dataset name them. --output-dir, --max-iters, --resume and --eval-only are the
flags every training tool shares (pretrain.cli); --max-iter still works. The initial checkpoint may be
any checkpoint ``tools/convert_checkpoint.py --to detectron2`` reads (MAE, MoCo, timm, DeiT,
torchvision, DINO, DINOv2, iBOT, I-JEPA, CLIP, ...) or a detectron2 file; it is converted in memory and placed
strictly (--variant: which network of a training checkpoint that holds several, DINO's student, I-JEPA's
context; recorded in results.json, and kept by --resume through the run's checkpoints). Pickled files
beyond tensors / numpy arrays are refused unless --allow-pickle (only for files you trust).
--num-gpus N on a machine without GPUs runs N CPU processes (gloo). The config, the datasets and the
checkpoint are checked before any process starts or any file is written; --eval-only in a training run's
folder writes results_eval.json and config_eval.yaml, leaving the run's results.json and config.yaml.
"""
import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.cli import add_run_args, is_key_value, positive_int, resume_override  # noqa: E402
from pretrain.errors import ConfigError, UserError  # noqa: E402

YACS_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")  # SOLVER.MAX_ITER


def is_override(value: str) -> bool:
    """An override ``--resume`` took for a path: ``key=value`` (LazyConfig), or a yacs key of a ``KEY VALUE`` pair."""
    return is_key_value(value) or bool(YACS_KEY.fullmatch(value))


def non_negative_int(text: str) -> int:
    """An argparse ``type`` for --reference-world-size (0: the config as it is)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


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
    p.add_argument("--variant", help="which network of a checkpoint that holds several: DINO / iBOT / DINOv2 teacher "
                                     "(default) or student, I-JEPA target (default) or context")
    p.add_argument("--train-json", help="training set: a COCO-format json (registered by path)")
    p.add_argument("--train-images", help="its image folder (default: found from the COCO layout)")
    p.add_argument("--test-json", help="evaluation set: a COCO-format json (registered by path)")
    p.add_argument("--test-images", help="its image folder (default: found from the COCO layout)")
    p.add_argument("--train-dataset", help="training set by name instead: a registered one, lvis:JSON[:IMAGE_ROOT] "
                                           "or cityscapes:ROOT:SPLIT (transfer.detection.formats)")
    p.add_argument("--test-dataset", help="evaluation set by name instead (as --train-dataset)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: the config's, CPU when no GPU)")
    p.add_argument("--pretrain", default=None, help="label for the results file (default: read off the checkpoint; "
                                                    "'random' without one)")
    p.add_argument("--allow-pickle", action="store_true", help="trust the checkpoint files' pickled objects")
    p.add_argument("--num-gpus", type=positive_int, default=1,
                   help="GPUs per machine; on a machine without GPUs, CPU processes (gloo)")
    p.add_argument("--num-machines", type=positive_int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 .. --num-machines - 1)")
    p.add_argument("--dist-url", default="auto", help="tcp://host:port of the rank-0 machine (multi-machine)")
    p.add_argument("--reference-world-size", type=non_negative_int, default=0,
                   help="the GPUs the recipe's batch, lr and schedule are for: on another number, scaled by "
                        "detectron2's rule (transfer.detection.scaling; the ladder's use); 0: as the config says")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = p.parse_args(argv)
    args.resume, taken = resume_override(args.resume, is_override)
    args.opts = taken + args.opts
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        p.error(f"--resume: checkpoint not found: {args.resume}")
    if not 0 <= args.machine_rank < args.num_machines:
        p.error(f"--machine-rank {args.machine_rank} is not one of the {args.num_machines} machines' ranks "
                f"(0 .. {args.num_machines - 1})")
    if args.num_machines > 1 and args.dist_url == "auto":
        p.error(f"--num-machines {args.num_machines} needs --dist-url tcp://HOST:PORT of the rank-0 machine")
    args.train_datasets = dataset_spec(p, args.train_json, args.train_images, "train", args.train_dataset)
    args.test_datasets = dataset_spec(p, args.test_json, args.test_images, "test", args.test_dataset)
    return args


def check_devices(args):
    """The processes --num-gpus asks for, against this machine (not at parsing: the command is valid
    elsewhere): detectron2's launch gives each process a GPU (NCCL) when any is visible, else runs them on
    the CPU (gloo)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device and args.device.startswith("cuda") and not gpus:
        raise ConfigError(f"--device {args.device}: no GPU is visible here; use --device cpu")
    if gpus and args.num_gpus > gpus and args.device != "cpu":
        raise ConfigError(f"--num-gpus {args.num_gpus}: this machine has {gpus} visible GPU(s)")
    if gpus and args.num_gpus * args.num_machines > 1 and args.device == "cpu":
        raise ConfigError(f"--device cpu with --num-gpus {args.num_gpus}: detectron2's launch starts NCCL "
                          f"processes when GPUs are visible; hide them (CUDA_VISIBLE_DEVICES=) for CPU processes")


def dataset_spec(parser, json_file, images, flag, named=None):
    if images and not json_file:
        parser.error(f"--{flag}-images needs --{flag}-json")
    if named:
        if json_file:
            parser.error(f"--{flag}-dataset and --{flag}-json both name the {flag} set: pass one")
        return [named]
    return None if not json_file else [f"{json_file}:{images}" if images else str(json_file)]


def load_recipe(args):
    """The config with its overrides, then the settings of the options."""
    from transfer.detection.engine import Recipe

    return Recipe.load(args.config_file, args.opts, init_checkpoint="" if args.random_init else args.checkpoint,
                       output_dir=args.output_dir, max_iter=args.max_iters, train_datasets=args.train_datasets,
                       test_datasets=args.test_datasets, device=args.device, eval_only=args.eval_only,
                       allow_pickle=args.allow_pickle, variant=args.variant, resume=args.resume)


def finished_run(args, output_dir: str):
    """The results file of an earlier run in ``output_dir`` when that folder is a default one (neither
    --output-dir nor an output override named it) and this run would write over it (no --resume); else None."""
    named = args.output_dir is not None or any(o.startswith("train.output_dir=") or o == "OUTPUT_DIR"
                                               for o in args.opts)
    if named or args.resume:
        return None
    found = sorted(Path(output_dir).glob("results.json")) + sorted(Path(output_dir).glob("eval/*/results.json"))
    return str(found[0]) if found else None


def prepare(args, world_size: int):
    """The recipe with the options and, for ``world_size`` processes, the reference-world-size rule applied."""
    from transfer.detection.scaling import scale_to_world_size

    recipe = load_recipe(args)
    scaled = scale_to_world_size(recipe, args.reference_world_size, world_size)
    if scaled:
        recipe.notes.append(scaled)
    return recipe


def check_inputs(args, recipe):
    """Every input the run reads, before a process starts, a model is built or a file is written: the
    datasets' files (the training sets only when it trains), the checkpoint it will load, and the output
    folder (a default one holding an earlier run's results is not written over)."""
    from transfer.detection.checkpoint import check_checkpoint

    recipe.check_datasets(train=not args.eval_only)
    if args.variant and not recipe.init_checkpoint:
        raise ConfigError(f"--variant {args.variant} picks a network of the initial checkpoint, and there is none: "
                          f"give --checkpoint, or leave the variant out")
    if args.resume not in (None, "auto"):
        check_checkpoint(args.resume, "--resume", args.allow_pickle)
    # The initial weights load unless a checkpoint is resumed (auto: the output folder's last, as detectron2 finds it).
    resumes = args.resume and (args.resume != "auto" or (Path(recipe.output_dir) / "last_checkpoint").is_file())
    if not resumes:
        what = "--checkpoint" if args.checkpoint else "train.init_checkpoint" if recipe.lazy else "MODEL.WEIGHTS"
        check_checkpoint(recipe.init_checkpoint, what, args.allow_pickle, args.variant)
    finished = finished_run(args, recipe.output_dir)
    if finished:
        raise ConfigError(f"the default output folder {recipe.output_dir} already holds an earlier run's results "
                          f"({finished}); pass --output-dir DIR for a new run, or --resume to continue that one")


def setup(recipe, args):
    """detectron2's ``default_setup``: the log file, the environment and arguments logged, the seed, the config
    saved as config.yaml. An evaluation-only run in a folder that holds a run's config.yaml saves its own as
    config_eval.yaml and leaves the run's, as it leaves the run's results.json (``engine.evaluate``)."""
    import copy
    import logging

    from detectron2.config import LazyConfig
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from pretrain.checkpoint import write_text_atomic

    out = Path(recipe.output_dir)
    if not (args.eval_only and (out / "config.yaml").is_file()):
        return default_setup(recipe.cfg, args)
    for name in ("fvcore", "detectron2"):  # default_setup's log files, appended to
        setup_logger(str(out), comm.get_rank(), name=name, configure_stdout=False)
    # Then default_setup without an output folder: the console, the environment, the seed, and no config.yaml.
    cfg = copy.deepcopy(recipe.cfg) if recipe.lazy else recipe.cfg.clone()
    if recipe.lazy:
        cfg.train.output_dir = None
    else:
        cfg.defrost()
        cfg.OUTPUT_DIR = None
    default_setup(cfg, args)
    if comm.is_main_process():
        path = out / "config_eval.yaml"
        if recipe.lazy:
            LazyConfig.save(recipe.cfg, str(path))
        else:
            write_text_atomic(path, recipe.cfg.dump())
        logging.getLogger("detectron2").info("Full config saved to %s (the run's config.yaml kept)", path)


def main(args, recipe=None):
    """One process's run; ``recipe``: the one ``cli`` loaded and checked, when the run is this process alone."""
    import logging

    from detectron2.utils import comm

    from transfer.detection.engine import evaluate_checkpoint, train

    if recipe is None:  # a process detectron2's launch started (the inputs were checked before)
        recipe = prepare(args, comm.get_world_size())
    setup(recipe, args)
    for note in recipe.notes:
        logging.getLogger("detectron2").warning(note)
    run = evaluate_checkpoint if args.eval_only else train
    return run(recipe, resume=args.resume, allow_pickle=args.allow_pickle, pretrain=args.pretrain,
               variant=args.variant)


def worker(args, messages: str):
    """``main`` in a process detectron2's launch started. A user error met there (a checkpoint that does not fit
    the model) ends the process with the user-error status and its message in ``messages/<rank>.txt``, for
    ``cli`` to say once (each process printing it, or torch's spawn printing its traceback, would not)."""
    from detectron2.utils import comm

    from pretrain.cli import USER_ERROR_EXIT

    try:
        return main(args)
    except UserError as e:
        Path(messages, f"{comm.get_rank()}.txt").write_text(str(e))
        raise SystemExit(USER_ERROR_EXIT) from None


def cli(argv=None):
    args = parse_args(argv)
    from transfer.detection import require_detectron2

    try:
        require_detectron2()
    except ImportError as e:
        raise UserError(str(e)) from None
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    from pretrain.cli import USER_ERROR_EXIT

    check_devices(args)
    world_size = args.num_gpus * args.num_machines
    recipe = prepare(args, world_size)
    check_inputs(args, recipe)
    if world_size == 1:
        return launch(main, 1, args=(args, recipe))
    # Launched processes load the recipe again: each registers the datasets by path in its own catalog.
    with tempfile.TemporaryDirectory(prefix="train_net-") as messages:
        try:
            launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                   dist_url=args.dist_url, args=(args, messages))
        except ProcessExitedException as e:
            said = sorted(Path(messages).glob("*.txt"))
            if e.exit_code != USER_ERROR_EXIT or not said:
                raise
            raise UserError(said[0].read_text()) from None


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(cli)
