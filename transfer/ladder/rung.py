"""A rung of the evaluation ladder: one protocol, declared in one file of ``transfer/ladder/rungs/``.

A rung says which tool runs it, which ``--data KEY`` folder it reads and what must be in it, the tasks its
``results.json`` names with each one's primary metric, the suites it belongs to, and its recipe for each
backbone (the config, the GPUs it was published with, the cost estimate). How a tool takes its checkpoint,
seed, output folder, resume flag and fewer GPUs than its recipe's is the tool's, so it lives in one base class
per tool (``FrozenFeatureRung``, ``ClassificationRung``, ``DetectionRung``, ``SegmentationRung``); a rung
subclasses one and declares the rest. ``RUNGS`` discovers them: a new rung is a new file, with no edit of the
ladder (``tests/test_rungs.py`` holds every registered rung to the contract).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from pretrain.errors import DataError
from pretrain.registry import Registry

if TYPE_CHECKING:  # the ladder's types, for annotations only (the ladder imports this module)
    from transfer.ladder import CheckpointInfo, Subject

REPO = Path(__file__).resolve().parents[2]

# The suites every rung may join besides ``full`` (every rung whose data is given), and what each is.
SUITES: Dict[str, str] = {
    "quick": "the frozen-feature rungs and the linear probe: kNN, linear, dense probe (minutes to hours)",
    "standard": "quick + ImageNet fine-tuning",
    "full": "every rung whose data is given",
    "moco_table6": "MoCo (He et al. 2019) Table 6: COCO keypoints, LVIS, Cityscapes instance, VOC and Cityscapes "
                   "semantic segmentation (dense pose: not supported)",
    "mae_transfer": "MAE (He et al. 2021) transfer: COCO (Table 4), ADE20K (Table 5), iNaturalist and Places "
                    "(Table 6), robustness (Table 3)",
}
# The suites that are a paper's table: the ladder's report lays each out as the paper does (rows: the checkpoint,
# its baseline, the published rows; columns: each rung's ``table_metrics``).
PAPER_TABLES = ("moco_table6", "mae_transfer")


@dataclass(frozen=True)
class Recipe:
    """What a rung runs for one backbone: its config (None for the tools without one), the GPUs it was
    published with, the cost estimate (GPU-hours on A100-class GPUs; 0 for the CPU-sized recipes) and what
    the estimate rests on (docs/ladder.md's cost table is written from these), and fixed tool arguments."""
    config: Optional[str] = None
    gpus: int = 1
    gpu_hours: float = 0.0
    basis: str = ""
    args: Tuple[str, ...] = ()


def require(root: Path, rung: str, key: str, *paths: str, hint: str = "") -> None:
    """A data check: each of ``paths`` (relative to ``root``; ``a|b``: either) exists, else one error naming
    every missing one, the folder and the layout expected."""
    def found(alt: str) -> bool:
        return (root / alt).is_dir() if alt.endswith("/") else (root / alt).is_file()

    missing = [p for p in paths if not any(found(alt) for alt in p.split("|"))]
    if missing:
        raise DataError(f"--data {key}={root}: the {rung} rung needs {', '.join(missing)} in it"
                        + (f" ({hint})" if hint else ""))


class Rung:
    """The interface: a rung is an instance of a registered subclass, all of whose fields are class attributes."""
    name: str  # the --rungs key and its folder
    order: float  # its place in the ladder and the report: cheapest first
    tool: str  # tools/*.py that runs it
    data: str  # the --data KEY of its dataset folder
    metrics: Dict[str, str]  # the tasks its results name -> the task's primary metric
    suites: Tuple[str, ...] = ()  # suites besides "full"
    recipes: Dict[str, Recipe] = {}  # backbone (results name) -> recipe
    # The frameworks' rungs: backbone -> a recipe whose config builds the ViT the checkpoint describes (its width,
    # depth, LayerScale, registers, ...), for a ViT no ``recipes`` config holds (``recipe_for``). None: the tool
    # builds every checkpoint's own network, so ``recipes`` serve every ViT.
    checkpoint_recipes: Optional[Dict[str, Recipe]] = None
    resume_flag: Optional[str] = "--resume"  # None: the tool has nothing to resume
    resume_at: int = 1  # where in the command the flag goes (after a positional config: 2)
    takes_variant: bool = False  # whether the tool takes --variant (a network of a checkpoint holding several)
    # What the --data folder must hold, relative to it: "name/" a folder, else a file; "a|b": either.
    layout: Tuple[str, ...] = ()
    layout_hint: str = ""  # the dataset's layout in words, for the error
    table_metrics: Tuple[str, ...] = ()  # the metrics a paper's table shows for it (default: the primary one)

    # ---------------------------------------------------------------- recipes
    def recipe_for(self, info: "CheckpointInfo") -> Optional[Recipe]:
        """The recipe for ``info``'s backbone; None: the rung has none for it.

        A backbone its name builds (a ResNet, a ViT preset without options) takes ``recipes``' own. Any other
        ViT (DINOv2, CLIP, BEiT ..., or a plain ViT of a shape no recipe has: DINO ViT-S/16) takes the recipe,
        among ``checkpoint_recipes`` (default: ``recipes``), of the ViT nearest in width (ratio), its cost
        scaled by the FLOPs per image (width^2 x depth x tokens). The CPU-sized recipes serve only ViTs
        narrower than any published one (under 192: the tests' and demos'), the GPU recipes the rest."""
        from pretrain.backbones import VIT_ARCHS

        if not info.needs_checkpoint and info.backbone in self.recipes:
            return self.recipes[info.backbone]
        if info.family != "vit":
            return None
        pool = self.recipes if self.checkpoint_recipes is None else self.checkpoint_recipes
        width, depth, patch = info.vit_size or _preset_size(info.backbone)
        candidates = {b: r for b, r in pool.items() if b in VIT_ARCHS and (r.gpu_hours == 0) == (width < 192)}
        if not candidates:
            return None
        ref = min(candidates, key=lambda b: (abs(math.log(width / VIT_ARCHS[b].embed_dim)), b))
        recipe, a = candidates[ref], VIT_ARCHS[ref]
        if ref == info.backbone:
            return recipe
        scale = (width ** 2 * depth / patch ** 2) / (a.embed_dim ** 2 * a.depth / a.patch_size ** 2)
        return replace(recipe, gpu_hours=round(recipe.gpu_hours * scale, 1),
                       basis=f"{recipe.basis}; {ref}'s recipe, x{scale:.2g} its FLOPs per image")

    # ---------------------------------------------------------------- data
    def check_data(self, root: Path) -> None:
        """Raise ``DataError`` naming what is missing from ``root`` (called before any job is planned)."""
        require(root, self.name, self.data, *self.layout, hint=self.layout_hint)

    def data_args(self, root: Path) -> Tuple[List[str], str]:
        """The tool's dataset arguments for the folder ``root``, and the task its results will name."""
        raise NotImplementedError

    # ---------------------------------------------------------------- jobs
    def command(self, recipe: Recipe, subject: "Subject", info: "CheckpointInfo", seed: int, folder: str,
                data_args: Sequence[str], extra: Sequence[str] = ()) -> List[str]:
        """The tool's command line for one job (``extra``: the user's ``--rung-args`` for this rung)."""
        raise NotImplementedError

    def resumed(self, command: Sequence[str]) -> List[str]:
        """``command`` continuing a job that started before."""
        cmd = list(command)
        if self.resume_flag:
            cmd.insert(self.resume_at, self.resume_flag)
        return cmd

    def keep_batch(self, command: Sequence[str], recipe_gpus: int, gpus: int) -> Tuple[Tuple[str, ...], str]:
        """Arguments that keep the recipe's batch (or apply the framework's scaling rule) on ``gpus`` GPUs
        instead of ``recipe_gpus``, and what they do."""
        return (), "none: the tool has no accumulation or scaling rule"

    def with_launch_args(self, command: Sequence[str], args: Sequence[str]) -> List[str]:
        """``command`` with ``keep_batch``'s arguments where the tool takes them (default: at the end)."""
        return [*command, *args]

    def own_launcher(self, command: Sequence[str], per_node: int, nodes: int, node_rank: int,
                     url: Optional[str]) -> Optional[List[str]]:
        """The command line when the tool starts its own processes (detectron2's ``launch``); None: torchrun's."""
        return None

    # ---------------------------------------------------------------- results
    def primary_metric(self, task: str) -> str:
        return self.metrics[task]

    def columns(self, task: str) -> Tuple[str, ...]:
        """The metrics of ``task`` a paper's table shows, in its order."""
        return self.table_metrics or (self.metrics[task],)

    def __repr__(self) -> str:
        return f"<rung {self.name}>"


def _preset_size(backbone: str) -> Tuple[int, int, int]:
    from pretrain.backbones import VIT_ARCHS

    a = VIT_ARCHS[backbone]
    return a.embed_dim, a.depth, a.patch_size


# ------------------------------------------------------------------ tool families
def _init(subject: "Subject", info: "CheckpointInfo") -> List[str]:
    return [subject.checkpoint] if subject.checkpoint else ["--random-init", info.arch]


def _label(subject: "Subject") -> List[str]:
    return ["--pretrain", subject.label] if subject.label else []


def _variant(subject: "Subject") -> List[str]:
    """``--variant NAME`` of a subject that is one network of a checkpoint holding several (DINO's student)."""
    return ["--variant", subject.variant] if subject.variant else []


class FrozenFeatureRung(Rung):
    """``tools/knn_eval.py`` and ``tools/dense_probe.py``: the checkpoint (or ``--random-init ARCH``) as the
    first argument, ``--out``, ``--seed``; one process, no scaling rule."""
    takes_variant = True

    def command(self, recipe, subject, info, seed, folder, data_args, extra=()):
        return [self.tool, *_init(subject, info), *_variant(subject), *data_args, "--out", folder, "--seed", str(seed),
                *_label(subject), *recipe.args, *extra]


class ClassificationRung(Rung):
    """``tools/train_cls.py CONFIG KEY=VALUE ...``: the ImageNet protocols and any class-folder dataset."""
    tool = "tools/train_cls.py"
    resume_at = 2  # after the positional config, whose path an optional --resume would otherwise take
    takes_variant = True

    layout = ("train/", "val/")
    layout_hint = "class folders: train/<class>/*.jpg, val/<class>/"

    def data_args(self, root):
        return [f"data.path={root}"], next(iter(self.metrics))

    def command(self, recipe, subject, info, seed, folder, data_args, extra=()):
        init = (["--checkpoint", subject.checkpoint, *_variant(subject), "model.arch=auto"] if subject.checkpoint
                else [f"model.arch={info.arch}", "model.pretrain=random"])
        return [self.tool, recipe.config, *init, *data_args, f"train.output_dir={folder}", f"train.seed={seed}",
                "data.synthetic=false", *recipe.args, *extra]

    def keep_batch(self, command, recipe_gpus, gpus):
        from pretrain.cli import is_key_value
        from transfer.classification.config import load_cls_config

        accum = int(load_cls_config(command[1], [a for a in command[2:] if is_key_value(a)]).train.accum_iter)
        accum *= recipe_gpus // gpus
        return (f"train.accum_iter={accum}",), f"batch kept by gradient accumulation: train.accum_iter={accum}"


def from_checkpoint(recipes: Dict[str, Recipe], *backbones: str) -> Dict[str, Recipe]:
    """The ``checkpoint_recipes`` of ViTDet recipes: each one's ``*_from_checkpoint.py`` twin config (the same recipe,
    its ViT built from the checkpoint: DINOv2, CLIP, ... with LayerScale, registers, other shapes), same GPUs and
    cost."""
    return {b: replace(recipes[b], config=recipes[b].config[:-len(".py")] + "_from_checkpoint.py") for b in backbones}


class DetectionRung(Rung):
    """``tools/train_net.py --config-file CONFIG``: detectron2, which starts its own processes."""
    tool = "tools/train_net.py"
    checkpoint_recipes: Dict[str, Recipe] = {}  # the configs that build the file's ViT: a rung's own
    takes_variant = True

    def command(self, recipe, subject, info, seed, folder, data_args, extra=()):
        init = ["--checkpoint", subject.checkpoint, *_variant(subject)] if subject.checkpoint else ["--random-init"]
        return [self.tool, "--config-file", recipe.config, *init, *data_args, "--output-dir", folder,
                *_label(subject), *recipe.args, *extra, f"train.seed={seed}"]

    def keep_batch(self, command, recipe_gpus, gpus):
        return (("--reference-world-size", str(recipe_gpus)),
                f"detectron2's reference world size {recipe_gpus}: batch and lr x{gpus}/{recipe_gpus}, "
                f"iterations and periods x{recipe_gpus}/{gpus}")

    def with_launch_args(self, command, args):
        return [command[0], *args, *command[1:]]  # options, before the config overrides that end the line

    def own_launcher(self, command, per_node, nodes, node_rank, url):
        return [command[0], "--num-gpus", str(per_node), "--num-machines", str(nodes), "--machine-rank",
                str(node_rank), *(["--dist-url", url] if url else []), *command[1:]]


class SegmentationRung(Rung):
    """``tools/train_seg.py CONFIG``: mmseg, its seed and scaling in the ``--cfg-options`` that end the line."""
    tool = "tools/train_seg.py"
    checkpoint_recipes: Dict[str, Recipe] = {}  # the configs that build the file's ViT: a rung's own
    resume_at = 2
    takes_variant = True

    def command(self, recipe, subject, info, seed, folder, data_args, extra=()):
        init = ["--checkpoint", subject.checkpoint, *_variant(subject)] if subject.checkpoint else ["--random-init"]
        return [self.tool, recipe.config, *init, *data_args, "--output-dir", folder, *_label(subject), *recipe.args,
                *extra, "--cfg-options", f"randomness.seed={seed}"]

    def keep_batch(self, command, recipe_gpus, gpus):
        from mmengine.config import Config

        config = command[1] if Path(command[1]).is_absolute() else str(REPO / command[1])
        # The per-GPU batch, read without importing the config's modules (the models: one number is needed).
        base = int(Config.fromfile(config, import_custom_modules=False).train_dataloader.batch_size) * recipe_gpus
        return (("auto_scale_lr.enable=True", f"auto_scale_lr.base_batch_size={base}"),
                f"mmseg's auto_scale_lr: lr x{gpus}/{recipe_gpus} (the recipe's batch {base}), iterations unchanged")

    def with_launch_args(self, command, args):
        cmd = list(command)
        return cmd + ([] if "--cfg-options" in cmd or not args else ["--cfg-options"]) + list(args)


# ------------------------------------------------------------------ the registry
RUNGS: Registry[Rung] = Registry("rung", "transfer.ladder.rungs")
register = RUNGS.register


def all_rungs() -> Dict[str, Rung]:
    """Every registered rung, in the ladder's order (cheapest first)."""
    found = sorted((cls() for cls in RUNGS.all().values()), key=lambda r: (r.order, r.name))
    return {r.name: r for r in found}


def get_rung(name: str) -> Rung:
    rungs = all_rungs()
    if name not in rungs:
        from pretrain.errors import ConfigError

        raise ConfigError(f"unknown rung {name!r}; expected one of {', '.join(rungs)}")
    return rungs[name]


def suites() -> Dict[str, List[str]]:
    """Suite name -> its rungs in order: each rung's ``suites``, and ``full`` = every rung."""
    out: Dict[str, List[str]] = {name: [] for name in SUITES}
    for rung in all_rungs().values():
        for suite in rung.suites:
            out.setdefault(suite, []).append(rung.name)
        out["full"].append(rung.name)
    return out


def data_keys() -> List[str]:
    return sorted({r.data for r in all_rungs().values()})


def primary_metric(task: str) -> Optional[str]:
    """The primary metric of a results task, from the rung that writes it (None: no rung does)."""
    for rung in all_rungs().values():
        if task in rung.metrics:
            return rung.metrics[task]
    return None


def backbones() -> List[str]:
    return sorted({b for r in all_rungs().values() for b in r.recipes})


def cost_table() -> str:
    """docs/ladder.md's cost table, from every rung's recipes (``tests/test_rungs.py`` holds the docs to it)."""
    lines = ["| backbone | rung | recipe | GPUs | GPU-hours | basis |", "|---|---|---|---|---|---|"]
    for backbone in backbones():
        for rung in all_rungs().values():
            recipe = rung.recipes.get(backbone)
            if recipe is None:
                continue
            hours = "CPU" if recipe.gpu_hours == 0 else f"{recipe.gpu_hours:g}"
            lines.append(f"| {backbone} | {rung.name} | {recipe.config or rung.tool} | {recipe.gpus} | {hours} | "
                         f"{recipe.basis} |")
    return "\n".join(lines)

