#!/usr/bin/env python
"""The whole pipeline in miniature, on a CPU with no dataset: ``make demo``.

1. writes seeded synthetic scenes (shapes of 5 classes on textured backgrounds): an
   unlabelled pretraining set, a labelled classification folder, a semantic-segmentation
   set and a COCO-format instance-segmentation set;
2. pretrains a tiny MAE ViT (pico/8) and a tiny MoCo v2 ResNet-18 on the unlabelled
   images, and draws MAE's reconstruction figures;
3. evaluates each checkpoint through the evaluation ladder (tools/evaluate.py), against a
   randomly initialised twin under the same protocol, several seeds each: kNN, linear probe,
   frozen dense probe, UperNet segmentation and (``--detection``, or detectron2 in
   ``--quick``) Mask R-CNN;
4. writes the report: each ladder's tables (mean ± std over seeds) and verdicts (Welch's
   t-test on the seeds), side by side, and prints where it is.

  python tools/demo.py                  # ~15 minutes on 2 cores
  python tools/demo.py --quick          # a smoke-sized run (CI)
  python tools/demo.py --out my_demo    # default: demo_output/

A rerun resumes: finished stages and ladder jobs are skipped, an interrupted pretraining
continues from its last checkpoint. --fresh starts over.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Size:
    pretrain_images: int
    img: int
    mae_epochs: int
    moco_epochs: int
    cls_per_class: int  # labelled folder for kNN and the linear probe (a quarter as many to validate)
    cls_epochs: int
    probe_iters: int
    seeds: int  # of the cheap rungs (kNN, linear, dense probe)
    full_seeds: int  # of UperNet and Mask R-CNN
    seg_train: int
    seg_val: int
    seg_iters: int
    det_train: int
    det_val: int
    det_img: int
    det_iters: int


FULL = Size(pretrain_images=1024, img=64, mae_epochs=40, moco_epochs=8, cls_per_class=40, cls_epochs=5,
            probe_iters=300, seeds=3, full_seeds=2, seg_train=256, seg_val=64, seg_iters=200,
            det_train=128, det_val=32, det_img=128, det_iters=150)
QUICK = Size(pretrain_images=64, img=64, mae_epochs=1, moco_epochs=1, cls_per_class=8, cls_epochs=1,
             probe_iters=10, seeds=2, full_seeds=1, seg_train=16, seg_val=8, seg_iters=6,
             det_train=8, det_val=4, det_img=96, det_iters=4)

# What each pretraining run is called in the report.
TITLES = {"mae": "MAE ViT-pico/8", "moco": "MoCo v2 ResNet-18"}


class Demo:
    def __init__(self, out: Path, size: Size, detection: bool = True):
        self.out, self.size, self.detection = out, size, detection
        self.data = out / "data"
        self.stamps = out / ".stages"
        self.stamps.mkdir(parents=True, exist_ok=True)
        self.log_dir = out / "logs"
        self.log_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------ helpers
    def done(self, stage: str) -> bool:
        return (self.stamps / stage).is_file()

    def mark(self, stage: str):
        from pretrain.checkpoint import write_text_atomic

        write_text_atomic(self.stamps / stage, time.strftime("%Y-%m-%d %H:%M:%S\n"))

    def checkpoint(self, method: str) -> Path:
        from pretrain.trainer import LAST
        from pretrain.methods import get_method

        return self.out / "pretrain" / method / get_method(method).checkpoint_name(LAST)

    def tool(self, name: str, *args, log: str, echo: bool = False) -> subprocess.CompletedProcess:
        """Run tools/<name> as a user would; its output goes to logs/<log>.log (``echo``: its progress
        lines, ``[i/n] ...``, to the console as well)."""
        log_path = self.log_dir / f"{log}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as f:
            proc = subprocess.Popen([sys.executable, str(REPO / "tools" / name), *map(str, args)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
            for line in proc.stdout:
                f.write(line)
                if echo and line.startswith("["):
                    print(f"    {line.rstrip()}", flush=True)
            proc.wait()
        if proc.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"tools/{name} failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
        return proc

    # ------------------------------------------------------------- stages
    def stage_data(self):
        from PIL import Image

        from pretrain.logger import progress
        from pretrain.synthetic import render_scene, scene_rng, write_coco_dataset, write_segmentation_dataset
        from transfer.classification.data import write_synthetic_folder

        s = self.size
        unlabelled = self.data / "unlabelled"
        unlabelled.mkdir(parents=True, exist_ok=True)
        # Seeds: 0 unlabelled, 1-2 segmentation, 3-4 detection, 5 classification: no image is shared.
        bar = progress(s.pretrain_images, "unlabelled scenes")
        for i in range(s.pretrain_images):
            Image.fromarray(render_scene(scene_rng(0, i), (s.img, s.img)).image).save(unlabelled / f"{i:05d}.png")
            bar.update(1)
        bar.close()
        write_segmentation_dataset(self.data / "seg", "train", s.seg_train, (s.img, s.img), seed=1)
        write_segmentation_dataset(self.data / "seg", "val", s.seg_val, (s.img, s.img), seed=2)
        # The COCO layout (annotations/instances_<split>2017.json beside <split>2017/), as the ladder reads it.
        write_coco_dataset(self.data / "coco", "train2017", s.det_train, (s.det_img, s.det_img), seed=3)
        write_coco_dataset(self.data / "coco", "val2017", s.det_val, (s.det_img, s.det_img), seed=4)
        write_synthetic_folder(self.data / "cls", per_class=s.cls_per_class, size=s.img, seed=5)

    def stage_pretrain(self, method: str):
        from pretrain.config import load_config
        from pretrain.trainer import Trainer

        s = self.size
        config = {"mae": "configs/pretrain/mae_vit_tiny_cpu.yaml", "moco": "configs/pretrain/moco_v2_r18_cpu.yaml"}
        epochs = s.mae_epochs if method == "mae" else s.moco_epochs
        overrides = [f"data.path={self.data / 'unlabelled'}", f"train.epochs={epochs}", "train.device=cpu",
                     f"train.output_dir={self.out / 'pretrain' / method}", f"train.ckpt_every_epochs={max(1, epochs // 4)}",
                     f"data.img_size={s.img}"]
        if method == "mae":
            # A short schedule on a tiny model wants a larger step than the paper's 1.5e-4 base.
            overrides += ["optim.warmup_epochs=%g" % min(2, epochs / 4), "optim.base_lr=1.5e-3"]
        if method == "moco" and s is QUICK:
            overrides += ["model.queue_size=256", "model.bn_splits=4"]
        if s is QUICK:
            overrides.append("train.batch_size=32")
        # fp32: bf16 autocast does not help models this small on a CPU (2 cores, AMX: MAE pico
        # 0.116 vs 0.246 s/step, MoCo R18 0.690 vs 0.714 s/step at batch 64, 64 px). At ViT-B / R50
        # sizes it depends on the CPU: faster with AMX, slower where bf16 is not in hardware (README,
        # Precision); train.amp=auto measures which.
        cfg = load_config(REPO / config[method], overrides)
        Trainer(cfg, resume="auto").fit()

    def stage_figures(self):
        self.tool("mae_visualize.py", self.checkpoint("mae"), "--synthetic", "4", "--out", self.out / "figures",
                  log="figures")

    def ladder_folder(self, method: str) -> Path:
        return self.out / "ladder" / method

    def stage_ladder(self, method: str):
        """tools/evaluate.py on the checkpoint: every rung the backbone has a recipe for, against random init."""
        from transfer.detection import detectron2_available

        s = self.size
        data = [f"imagenet={self.data / 'cls'}", f"ade20k={self.data / 'seg'}"]
        # Fine-tuning left out for time (a minute more; on 200 labelled scenes it stays at chance for both sides).
        rungs = "knn,linear,dense_probe,segmentation"
        if not self.detection:
            print("    Mask R-CNN left out (--detection adds it)")
        elif detectron2_available():
            data.append(f"coco={self.data / 'coco'}")
            rungs += ",detection"
        else:
            print("    detectron2 is not installed: Mask R-CNN left out (see docs/detectron2.md)")
        quiet = "train.progress=false train.tensorboard=false data.num_workers=0"
        cls = f"{quiet} train.epochs={s.cls_epochs} data.img_size={s.img}"
        self.tool("evaluate.py", self.checkpoint(method), "--rungs", rungs, "--baseline", "random",
                  "--seeds", s.seeds, "--rung-seeds", f"segmentation={s.full_seeds}", f"detection={s.full_seeds}",
                  "--out", self.ladder_folder(method), "--data", *data, "--rung-args",
                  f"knn=--img-size {s.img} --num-workers 0", f"linear={cls}",
                  f"dense_probe=--iters {s.probe_iters} --crop {s.img} --num-workers 0",
                  f"segmentation=--max-iters {s.seg_iters}", f"detection=--max-iters {s.det_iters}",
                  log=f"ladder_{method}", echo=True)

    def ladder_report(self, method: str) -> Path:
        from transfer.ladder import checkpoint_folder, inspect_checkpoint

        info = inspect_checkpoint(self.checkpoint(method))  # the ladder's folder is keyed by the file's content
        return checkpoint_folder(self.ladder_folder(method), info) / "report" / "report.md"

    def stage_report(self) -> Path:
        """report/report.md: each ladder's verdicts side by side, then links to their tables and curves."""
        s = self.size
        lines = ["# sslkit demo: pretrained vs random initialisation, same protocol, several seeds", "",
                 "## Verdict", ""]
        links = []
        for method, title in TITLES.items():
            report = self.ladder_report(method)
            verdicts = report.read_text().split("## Verdicts", 1)[1].split("## Training curves")[0]
            lines += [f"**{title}** ({method} pretraining) against its random twin:", ""]
            lines += [line for line in verdicts.splitlines() if line.startswith(("- ", "Skipped"))] + [""]
            links.append(f"- {title}: [{report.relative_to(self.out)}](../{report.relative_to(self.out)})")
        lines += [f"A verdict is Welch's t-test on the seeds (p < 0.05; docs/ladder.md): kNN, linear probe and dense "
                  f"probe ran {s.seeds} seeds a side, UperNet and Mask R-CNN {s.full_seeds} "
                  f"(\"undecided\" with one). Budget: pretraining on {s.pretrain_images} unlabelled {s.img}px scenes "
                  f"(MAE {s.mae_epochs} epochs, MoCo {s.moco_epochs} epochs); kNN / linear probe on "
                  f"{5 * s.cls_per_class} labelled scenes ({s.cls_epochs} epochs), the dense probe {s.probe_iters} "
                  f"iterations, UperNet {s.seg_iters}, Mask R-CNN {s.det_iters}; the same for both sides of a "
                  "comparison. The point is the pipeline and the direction of the gaps, at a toy scale.",
                  "", "## Tables, charts and training curves", "", *links]
        from pretrain.checkpoint import write_text_atomic

        return write_text_atomic(self.out / "report" / "report.md", "\n".join(lines) + "\n")


def check_out(out: Path, size: Size, fresh: bool) -> None:
    """--out is a new or empty folder, or a demo's (its ``.size`` file): the demo writes into it, and --fresh
    deletes it, so a folder of anything else is refused untouched. A demo of another size needs --fresh."""
    from pretrain.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; give a new folder (default: demo_output)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / ".size").is_file():
        raise ConfigError(f"--out {out}: a folder that is not a demo's (no .size file), left untouched; give a new "
                          "or empty folder, or the --out of an earlier demo")
    if not fresh and (out / ".size").read_text() != str(size):
        raise ConfigError(f"--out {out} holds a demo of another size; use --fresh (deletes it) or another --out")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (a few minutes)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--detection", action="store_true",
                   help="add the Mask R-CNN rung to the full-size demo (about 5 more minutes; --quick always has it)")
    p.add_argument("--data-only", action="store_true",
                   help="write the datasets (<out>/data/: unlabelled, cls, seg, coco) and stop, e.g. for a study")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    size = QUICK if args.quick else FULL
    check_out(out, size, args.fresh)  # before anything in it is deleted or written
    if args.fresh and out.exists():
        shutil.rmtree(out)
    from pretrain.checkpoint import write_text_atomic

    write_text_atomic(out / ".size", str(size))  # creates the folder

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    demo = Demo(out, size, detection=args.quick or args.detection)
    stages = [("data", demo.stage_data), ("pretrain_mae", lambda: demo.stage_pretrain("mae")),
              ("pretrain_moco", lambda: demo.stage_pretrain("moco")), ("figures", demo.stage_figures),
              ("ladder_mae", lambda: demo.stage_ladder("mae")), ("ladder_moco", lambda: demo.stage_ladder("moco"))]
    if args.data_only:
        stages = stages[:1]
    t0 = time.time()
    for i, (name, fn) in enumerate(stages, 1):
        if demo.done(name):
            print(f"[{i}/{len(stages) + 1}] {name}: done earlier, skipped")
            continue
        print(f"[{i}/{len(stages) + 1}] {name} ...", flush=True)
        t = time.time()
        fn()
        demo.mark(name)
        print(f"[{i}/{len(stages) + 1}] {name}: {time.time() - t:.0f}s", flush=True)
    if args.data_only:
        print(f"datasets written to {demo.data}")
        return
    report = demo.stage_report()
    print(f"[{len(stages) + 1}/{len(stages) + 1}] report: {report}")
    print("\n".join(line for line in report.read_text().split("## Tables")[0].splitlines()
                    if line.startswith(("- ", "**"))))
    print(f"\ndemo finished in {time.time() - t0:.0f}s\nreport:  {report}\nfigures: {out / 'figures'}")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
