"""The robustness rung (transfer/robustness.py, tools/robustness_eval.py): ImageNet-C's mCE against an independent
re-derivation, ImageNet-A / -R's 200-class restriction, and the ladder's finetune + robustness rungs end to end on
generated data in the variants' folder layouts."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_tool
from transfer.robustness import ALEXNET_ERRORS, CORRUPTIONS, SEVERITIES, corruption_errors, mean_corruption_error

# AlexNet's top-1 error per corruption, averaged over the 5 severities, in CORRUPTIONS' order: google-research/augmix
# imagenet.py's ALEXNET_ERR ("Raw AlexNet errors taken from https://github.com/hendrycks/robustness"), a second
# publication of the benchmark's normaliser, in another form than transfer.robustness.ALEXNET_ERRORS.
AUGMIX_ALEXNET_ERR = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
                      0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]  # the first five ImageNet classes


def test_alexnets_errors_are_the_published_ones():
    assert list(ALEXNET_ERRORS) == list(CORRUPTIONS) and len(CORRUPTIONS) == 15
    for c, mean in zip(CORRUPTIONS, AUGMIX_ALEXNET_ERR):
        assert len(ALEXNET_ERRORS[c]) == len(SEVERITIES)
        assert sum(ALEXNET_ERRORS[c]) / 5 == pytest.approx(mean, abs=1e-6), c


def test_mce_against_an_independent_rederivation():
    """augmix's compute_mce: the mean over corruptions of 100 x (mean error over severities) / AlexNet's mean error."""
    import numpy as np

    rng = np.random.default_rng(0)
    errors = {c: list(rng.uniform(0.05, 0.95, 5)) for c in CORRUPTIONS}
    expected = np.mean([100 * np.mean(errors[c]) / AUGMIX_ALEXNET_ERR[i] for i, c in enumerate(CORRUPTIONS)])
    assert mean_corruption_error(errors) == pytest.approx(expected, rel=1e-5)
    ce = corruption_errors(errors)
    assert ce["fog"] == pytest.approx(100 * np.mean(errors["fog"]) / AUGMIX_ALEXNET_ERR[CORRUPTIONS.index("fog")],
                                      rel=1e-5)
    # AlexNet itself scores 100; half its errors everywhere, 50; a perfect classifier 0.
    assert mean_corruption_error({c: list(e) for c, e in ALEXNET_ERRORS.items()}) == pytest.approx(100)
    assert mean_corruption_error({c: [x / 2 for x in e] for c, e in ALEXNET_ERRORS.items()}) == pytest.approx(50)
    assert mean_corruption_error({c: [0.0] * 5 for c in CORRUPTIONS}) == 0
    with pytest.raises(ValueError, match="fog"):  # the benchmark's number is over all 15
        mean_corruption_error({c: e for c, e in errors.items() if c != "fog"})


def write_image(path: Path, rgb, size: int = 24, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 40, (size, size, 3))
    Image.fromarray(np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)).save(path)


def test_the_subsets_restrict_the_logits(tmp_path):
    """ImageNet-A / -R score by their classes only: a classifier whose argmax is a class outside the subset, and
    whose ranking within it is right, scores 100% restricted and 0% over all its outputs."""
    import torch

    from pretrain.data import ImageFolderDataset
    from pretrain.transforms import eval_transform
    from transfer.robustness import EvalSet, count_correct, hits

    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 0.0, 9.0, 1.0]])  # argmax 2 for both: outside {0, 3}
    subset, target = torch.tensor([0, 3]), torch.tensor([1, 0])  # the classes 3 and 0 of the model
    assert hits(logits, target, subset, restrict=True).tolist() == [True, True]
    assert hits(logits, target, subset, restrict=False).tolist() == [False, False]

    # The same through the data path: red images are output 0, blue ones output 3, output 2 is everyone's argmax.
    for i in range(3):
        write_image(tmp_path / "imagenet-a" / WNIDS[0] / f"{i}.jpg", (200, 0, 0), seed=i)
        write_image(tmp_path / "imagenet-a" / WNIDS[3] / f"{i}.jpg", (0, 0, 200), seed=10 + i)

    class ColourModel(torch.nn.Module):
        def forward(self, x):
            red, blue = x[:, 0].mean(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))
            return torch.stack([red, torch.zeros_like(red), torch.full_like(red, 100.0), blue], dim=1)

    dataset = ImageFolderDataset(tmp_path / "imagenet-a", eval_transform(16))
    restricted = EvalSet("imagenet-a", dataset, [0, 3], restrict=True)
    assert count_correct(ColourModel(), restricted, torch.device("cpu"), 4, 0) == (6, 6)
    plain = EvalSet("imagenet-a", dataset, [0, 3], restrict=False)
    assert count_correct(ColourModel(), plain, torch.device("cpu"), 4, 0) == (0, 6)


def write_variants(root: Path, classes=WNIDS, subset=WNIDS[:3]) -> None:
    """Tiny ImageNet variants in their releases' layouts: Sketch on all ``classes``, A, R and every ImageNet-C set on
    ``subset``; noise around a colour per class, so that the scores are neither 0 nor 100."""
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for c, wnid in enumerate(classes):
        for i in range(2):
            write_image(root / "imagenet-sketch" / wnid / f"sketch_{i}.JPEG", colours[c], seed=100 * c + i)
        if wnid not in subset:
            continue
        write_image(root / "imagenet-a" / wnid / "a.jpg", colours[c], seed=1000 + c)
        write_image(root / "imagenet-r" / wnid / "r.jpg", colours[(c + 1) % len(colours)], seed=2000 + c)
        for k, corruption in enumerate(CORRUPTIONS):
            for s in SEVERITIES:
                write_image(root / "imagenet-c" / corruption / str(s) / wnid / "c.JPEG", colours[(c + s) % 5],
                            seed=10000 + 100 * k + 10 * s + c)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A MAE ViT-pico checkpoint (a few steps), an ImageNet-style folder of the 5 wnids, the variants."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    root = tmp_path_factory.mktemp("robustness")
    Trainer(load_config(None, ["model.arch=mae_vit_pico_patch8", "model.decoder_depth=1",
                               "model.decoder_embed_dim=32", "model.decoder_num_heads=2", "data.img_size=32",
                               "data.synthetic=true", "data.synthetic_images=16", "data.num_workers=0",
                               "train.batch_size=8", "train.epochs=1", "train.device=cpu", "train.progress=false",
                               "train.tensorboard=false", "optim.warmup_epochs=0", f"train.output_dir={root}/mae"],
                        method="mae")).fit()
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for split, n in (("train", 8), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            for i in range(n):
                write_image(root / "imagenet" / split / wnid / f"{i}.JPEG", colours[c], seed=50000 + 100 * c + i)
    write_variants(root / "variants")
    return root


FINETUNE = ("data.img_size=32 data.num_workers=0 train.epochs=1 train.batch_size=8 train.progress=false "
            "train.tensorboard=false")


@pytest.mark.slow
def test_the_ladders_finetune_and_robustness_rungs_end_to_end(world, tmp_path):
    """The robustness job scores its finetune job's classifier on the four variants (ImageNet-Sketch's top-1 equal to
    the classification engine's own evaluation of it, the mCE to its re-derivation from the sets' scores); a
    robustness job whose finetune job did not run (seed 1 here) fails naming the classifier it needs."""
    import numpy as np

    from transfer.results import read_results

    out = tmp_path / "ladder"
    proc = run_tool("tools/evaluate.py", world / "mae" / "checkpoint-last.pth", "--rungs", "finetune,robustness",
                    "--seeds", "1", "--rung-seeds", "robustness=2", "--baseline", "random", "--out", out, "--data",
                    f"imagenet={world / 'imagenet'}", f"imagenet_variants={world / 'variants'}",
                    "--rung-args", f"finetune={FINETUNE}", env={"OMP_NUM_THREADS": "1"}, timeout=600)
    folder = next(out.iterdir())
    for role in ("pretrained", "baseline"):
        job = folder / "robustness" / role / "seed1"
        assert f"robustness/{role}/seed1: FAILED" in proc.stdout and not (job / "results.json").exists()
        errors = [line for line in (job / "output.txt").read_text().splitlines() if line.startswith("error: ")]
        classifier = folder / "finetune" / role / "seed1" / "checkpoint-last.pth"
        assert len(errors) == 1 and f"classifier not found: {classifier}" in errors[0], errors
        assert f"robustness/{role}/seed0: sketch_top1 " in proc.stdout, proc.stdout
        rec = read_results(folder / "robustness" / role / "seed0")
        tuned = read_results(folder / "finetune" / role / "seed0")
        assert rec["task"] == "imagenet_robustness" and rec["backbone"] == "vit_pico_patch8"
        assert rec["pretrain"] == tuned["pretrain"] == ("mae" if role == "pretrained" else "random")
        assert rec["classifier"] == str(folder / "finetune" / role / "seed0" / "checkpoint-last.pth")
        assert rec["recipe"]["img_size"] == 32 and rec["recipe"]["epochs"] == 1
        sets = rec["sets"]
        assert (sets["imagenet-a"]["images"], sets["imagenet-a"]["classes"]) == (3, 3)
        assert (sets["imagenet-sketch"]["images"], sets["imagenet-sketch"]["classes"]) == (10, 5)
        assert sum(k.startswith("imagenet-c/") and k.count("/") == 2 for k in sets) == 75
        assert sets["imagenet-c/fog/3"]["classes"] == 3
        m = rec["metrics"]
        assert all(m[k] is not None for k in ("in_a_top1", "in_r_top1", "sketch_top1", "in_c_mce", "in_c_top1"))
        errs = {c: [1 - sets[f"imagenet-c/{c}/{s}"]["top1"] / 100 for s in SEVERITIES] for c in CORRUPTIONS}
        expected = np.mean([100 * np.mean(errs[c]) / AUGMIX_ALEXNET_ERR[i] for i, c in enumerate(CORRUPTIONS)])
        assert m["in_c_mce"] == pytest.approx(expected, rel=1e-6)
        assert m["in_c_top1"] == pytest.approx(np.mean([sets[f"imagenet-c/{c}/{s}"]["top1"] for c in CORRUPTIONS
                                                         for s in SEVERITIES]))

    # ImageNet-Sketch holds all 5 classes: the engine's own evaluation of the classifier on it is the same top-1.
    from transfer.classification.config import load_cls_config
    from transfer.classification.engine import ClassificationTrainer

    job = folder / "finetune" / "pretrained" / "seed0"
    sketch = world / "variants" / "imagenet-sketch"
    cfg = load_cls_config(job / "config.yaml", ["data.path=null", f"data.train={sketch}", f"data.val={sketch}",
                                                f"train.output_dir={tmp_path / 'eval'}"])
    engine = ClassificationTrainer(cfg, resume=str(job / "checkpoint-last.pth"), eval_only=True).run_eval_only()
    assert read_results(folder / "robustness" / "pretrained" / "seed0")["metrics"]["sketch_top1"] == \
        pytest.approx(engine["top1"])
    report = (folder / "report" / "report.md").read_text()
    assert "robustness in_c_mce" in report and "robustness sketch_top1" in report
