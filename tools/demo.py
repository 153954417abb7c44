#!/usr/bin/env python
"""The whole pipeline in miniature, on a CPU with no dataset: ``make demo``.

1. writes seeded synthetic scenes (shapes of 5 classes on textured backgrounds): an
   unlabelled pretraining set, a semantic-segmentation set and a COCO-format
   instance-segmentation set;
2. pretrains a tiny MAE ViT (pico/8) and a tiny MoCo v2 ResNet-18 on the unlabelled
   images, and draws MAE's reconstruction figures;
3. transfers both, and a randomly initialised twin of each, under the same budget, to
   semantic segmentation (mmseg UperNet) and, when detectron2 is installed, to
   instance segmentation (Mask R-CNN);
4. writes the comparison report (tools/report.py, random init as the baseline) with a
   verdict on whether pretraining helped at this scale, and prints where it is.

  python tools/demo.py                  # ~10 minutes on 2 cores
  python tools/demo.py --quick          # a smoke-sized run (CI)
  python tools/demo.py --out my_demo    # default: demo_output/

A rerun resumes: finished stages and runs are skipped, an interrupted pretraining
continues from its last checkpoint. --fresh starts over.
"""
from __future__ import annotations

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
    seg_train: int
    seg_val: int
    seg_iters: int
    det_train: int
    det_val: int
    det_img: int
    det_iters: int


FULL = Size(pretrain_images=1024, img=64, mae_epochs=20, moco_epochs=8, seg_train=256, seg_val=64, seg_iters=300,
            det_train=128, det_val=32, det_img=128, det_iters=150)
QUICK = Size(pretrain_images=64, img=64, mae_epochs=1, moco_epochs=1, seg_train=16, seg_val=8, seg_iters=6,
             det_train=8, det_val=4, det_img=96, det_iters=4)

# A verdict's margin (metric points): a smaller gap between a pretrained run and its random
# twin is called a tie, not a win.
NOISE = 1.0

# name -> (pretrain label, backbone label, pretraining run it starts from or None for random init)
SEG_RUNS = {
    "seg_vit_mae": ("mae", "configs/demo/seg_vit.py", "mae"),
    "seg_vit_random": ("random", "configs/demo/seg_vit.py", None),
    "seg_r18_moco": ("moco_v2", "configs/demo/seg_r18.py", "moco"),
    "seg_r18_random": ("random", "configs/demo/seg_r18.py", None),
}
DET_RUNS = {
    "det_vit_mae": ("mae", "configs/detectron2/tiny/mask_rcnn_vitdet_pico.py", "mae"),
    "det_vit_random": ("random", "configs/detectron2/tiny/mask_rcnn_vitdet_pico.py", None),
    "det_r18_moco": ("moco_v2", "configs/detectron2/tiny/mask_rcnn_R_18_FPN.py", "moco"),
    "det_r18_random": ("random", "configs/detectron2/tiny/mask_rcnn_R_18_FPN.py", None),
}


class Demo:
    def __init__(self, out: Path, size: Size):
        self.out, self.size = out, size
        self.data, self.runs = out / "data", out / "runs"
        self.stamps = out / ".stages"
        self.stamps.mkdir(parents=True, exist_ok=True)
        self.log_dir = out / "logs"
        self.log_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------ helpers
    def done(self, stage: str) -> bool:
        return (self.stamps / stage).is_file()

    def mark(self, stage: str):
        (self.stamps / stage).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))

    def checkpoint(self, method: str) -> Path:
        from pretrain.trainer import LAST
        from pretrain.methods import METHODS

        return self.out / "pretrain" / method / METHODS[method].checkpoint_name(LAST)

    def tool(self, name: str, *args, log: str) -> subprocess.CompletedProcess:
        """Run tools/<name> as a user would; its output goes to logs/<log>.log."""
        log_path = self.log_dir / f"{log}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as f:
            proc = subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], cwd=REPO,
                                  stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"tools/{name} failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
        return proc

    # ------------------------------------------------------------- stages
    def stage_data(self):
        from pretrain.synthetic import write_coco_dataset, write_segmentation_dataset, render_scene, scene_rng
        from PIL import Image
        from tqdm import tqdm

        s = self.size
        unlabelled = self.data / "unlabelled"
        unlabelled.mkdir(parents=True, exist_ok=True)
        # Seeds: 0 unlabelled, 1-2 segmentation, 3-4 detection: no image is shared between sets.
        for i in tqdm(range(s.pretrain_images), desc="unlabelled scenes", leave=False):
            Image.fromarray(render_scene(scene_rng(0, i), (s.img, s.img)).image).save(unlabelled / f"{i:05d}.png")
        write_segmentation_dataset(self.data / "seg", "train", s.seg_train, (s.img, s.img), seed=1)
        write_segmentation_dataset(self.data / "seg", "val", s.seg_val, (s.img, s.img), seed=2)
        write_coco_dataset(self.data / "coco", "train", s.det_train, (s.det_img, s.det_img), seed=3)
        write_coco_dataset(self.data / "coco", "val", s.det_val, (s.det_img, s.det_img), seed=4)

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
        # 0.116 vs 0.246 s/step, MoCo R18 0.690 vs 0.714 s/step at batch 64, 64 px); it does at
        # ViT-B / R50 sizes (README, Benchmarks), where the configs' train.amp=bf16 is worth it.
        cfg = load_config(REPO / config[method], overrides)
        Trainer(cfg, resume="auto").fit()

    def stage_figures(self):
        self.tool("mae_visualize.py", self.checkpoint("mae"), "--synthetic", "4", "--out", self.out / "figures",
                  log="figures")

    def stage_segmentation(self):
        from tqdm import tqdm

        classes = self.data / "seg" / "classes.txt"
        for name, (pretrain, config, source) in tqdm(SEG_RUNS.items(), desc="segmentation transfer"):
            work = self.runs / name
            if (work / "results.json").is_file():
                continue
            init = ["--checkpoint", self.checkpoint(source)] if source else ["--random-init"]
            self.tool("train_seg.py", config, *init, "--pretrain", pretrain, "--data-root", self.data / "seg",
                      "--classes", classes, "--iters", self.size.seg_iters, "--work-dir", work, "--resume", log=name)

    def stage_detection(self):
        from tqdm import tqdm

        from transfer.detection import detectron2_available

        if not detectron2_available():
            print("detectron2 is not installed: skipping the Mask R-CNN transfer (see docs/detectron2.md)")
            return
        coco = self.data / "coco"
        for name, (pretrain, config, source) in tqdm(DET_RUNS.items(), desc="detection transfer"):
            work = self.runs / name
            if (work / "results.json").is_file():
                continue
            init = ["--checkpoint", self.checkpoint(source)] if source else ["--random-init"]
            self.tool("train_net.py", "--config-file", config, *init, "--pretrain", pretrain,
                      "--train-json", coco / "annotations" / "instances_train.json", "--train-images", coco / "train",
                      "--test-json", coco / "annotations" / "instances_val.json", "--test-images", coco / "val",
                      "--max-iter", self.size.det_iters, "--output-dir", work, "--resume", log=name)

    def stage_report(self) -> Path:
        from transfer.report import load_runs, write_report

        rows = load_runs([self.runs])
        report = write_report(rows, self.out / "report", baseline="random", include_published=False,
                              title="sslkit demo: pretrained vs random initialisation, same budget")
        title, _, body = report.read_text().partition("\n")
        report.write_text(f"{title}\n\n{self.verdict(rows)}\n{body}")
        return report

    def verdict(self, rows) -> str:
        """Says, with the numbers, whether each pretrained backbone beat its random twin. A gap
        within NOISE points is called a tie: these runs are small, one seed each."""
        primary = {"semantic_seg": "mIoU", "coco_instance_seg": "mask_AP", "coco_det": "box_AP"}
        lines = ["## Verdict", ""]
        for task, metric in primary.items():
            by = {(r.backbone, r.pretrain): r.metrics.get(metric) for r in rows if r.task == task}
            for (backbone, pretrain), value in sorted(by.items()):
                if pretrain == "random":
                    continue
                base = by.get((backbone, "random"))
                if value is None or base is None:
                    lines.append(f"- {task}, {backbone}: {pretrain} {value}, random {base}: incomplete")
                    continue
                gain = value - base
                if gain > NOISE:
                    word = "better than random initialisation."
                elif gain < -NOISE:
                    word = "WORSE than random initialisation at this scale."
                else:
                    word = f"no clear difference from random initialisation (within ±{NOISE:g}) at this scale."
                lines.append(f"- {task}, {backbone}: {pretrain} pretraining gives {metric} {value:.2f} vs "
                             f"{base:.2f} from random init ({gain:+.2f}): {word}")
        s = self.size
        lines += ["", f"Budget: pretraining on {s.pretrain_images} unlabelled {s.img}px scenes (MAE {s.mae_epochs} "
                  f"epochs, MoCo {s.moco_epochs} epochs); every transfer run of a task has the same iterations "
                  f"({s.seg_iters} for segmentation, {s.det_iters} for detection) and data. Numbers this small are "
                  "noisy: the point is the pipeline, and the direction of the gap."]
        return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (about a minute)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    size = QUICK if args.quick else FULL
    if out.exists() and (out / ".size").is_file() and (out / ".size").read_text() != str(size):
        sys.exit(f"error: {out} holds a demo of another size; use --fresh or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".size").write_text(str(size))

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    demo = Demo(out, size)
    stages = [("data", demo.stage_data), ("pretrain_mae", lambda: demo.stage_pretrain("mae")),
              ("pretrain_moco", lambda: demo.stage_pretrain("moco")), ("figures", demo.stage_figures),
              ("segmentation", demo.stage_segmentation), ("detection", demo.stage_detection)]
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
    report = demo.stage_report()
    print(f"[{len(stages) + 1}/{len(stages) + 1}] report: {report}")
    print("\n".join(line for line in report.read_text().splitlines() if line.startswith("- ")))
    print(f"\ndemo finished in {time.time() - t0:.0f}s\nreport:  {report}\nfigures: {out / 'figures'}")


if __name__ == "__main__":
    main()
