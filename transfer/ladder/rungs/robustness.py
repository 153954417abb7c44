"""Robustness of the fine-tuned classifier: ImageNet-A / -R (200-class subsets), -Sketch, -C's mCE (MAE's Table 3).

It trains nothing: it evaluates the classifier that the ``finetune`` rung wrote for the same subject and seed
(``<checkpoint folder>/finetune/<role>/seed<k>/checkpoint-last.pth``), so it comes after that rung in the ladder;
where that classifier is absent when the job runs, the tool fails naming the file.
"""
from pathlib import Path

from transfer.ladder.rung import Recipe, Rung, register
from transfer.ladder.rungs.finetune import Finetune

# Forward passes over IN-A 7.5k + IN-R 30k + Sketch 50k + IN-C 3.75 M (15 x 5 x 50k) = 3.84 M images.
_IMAGES = "3.84 M images (IN-C 3.75 M, Sketch 50k, IN-R 30k, IN-A 7.5k), one forward each"
_GPU_ARGS = ("--batch", "256", "--num-workers", "10")


@register
class Robustness(Rung):  # its own tool: the classifier first, --out, --seed; one process, no scaling rule
    name = "robustness"
    order = 65  # after finetune, whose classifier it reads (and after the first six rungs' places)
    tool = "tools/robustness_eval.py"
    data = "imagenet_variants"
    # Sketch: all 1000 classes and the most images (50k), so the steadiest of the four across seeds, and higher is
    # better as the ladder's verdict reads a primary metric (ImageNet-C's mCE is lower-better: a column, not this).
    metrics = {"imagenet_robustness": "sketch_top1"}
    table_metrics = ("in_c_mce", "in_a_top1", "in_r_top1", "sketch_top1")  # MAE Table 3's columns, in its order
    suites = ("mae_transfer",)
    resume_flag = None  # one pass of forward passes: nothing to resume
    # A variant (DINO's student) is evaluated, though the tool takes no --variant: its classifier is the finetune
    # job's in the same ladder folder (``classifier``), which is the variant's own (``<stem>-<variant>-<sha>``) and
    # was fine-tuned from that network (its config records model.variant, which the results record).
    takes_variant = True
    recipes = {
        "vit_base_patch16": Recipe(gpus=1, gpu_hours=0.6, basis=_IMAGES + ", ~2,000 img/s (bf16)", args=_GPU_ARGS),
        "vit_large_patch16": Recipe(gpus=1, gpu_hours=1.6, basis="as ViT-B, ~3x the FLOPs", args=_GPU_ARGS),
        "vit_pico_patch8": Recipe(basis="minutes on a CPU", args=("--batch", "64", "--num-workers", "0")),
    }

    layout = ("imagenet-a/|imagenet-r/|imagenet-sketch/|imagenet-c/",)
    layout_hint = ("the releases' folders: imagenet-a/<wnid>/*.jpg, imagenet-r/<wnid>/, imagenet-sketch/<wnid>/, "
                   "imagenet-c/<corruption>/<1..5>/<wnid>/ (those you have)")

    def data_args(self, root):
        return ["--data-root", str(root)], "imagenet_robustness"

    @staticmethod
    def classifier(folder: str) -> Path:
        """The finetune job's classifier for the robustness job in ``folder`` (<ckpt>/robustness/<role>/seed<k>)."""
        from pretrain.trainer import LAST
        from transfer.classification.engine import checkpoint_name  # the name tools/train_cls.py writes

        job = Path(folder)
        return job.parents[1].parent / Finetune.name / job.parent.name / job.name / checkpoint_name(LAST)

    def command(self, recipe, subject, info, seed, folder, data_args, extra=()):
        return [self.tool, str(self.classifier(folder)), *data_args, "--out", folder, "--seed", str(seed),
                *recipe.args, *extra]
