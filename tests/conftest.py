"""Shared test helpers. Collection imports nothing heavy: tests import torch & co. themselves."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSLKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
# Set by .ci/run where ../shared provides them: a test that needs detectron2 or the real data then fails
# when they are missing or broken, instead of skipping (a skip would hide a broken install).
REQUIRE_DETECTRON2 = "SSLKIT_REQUIRE_DETECTRON2"
REQUIRE_SHARED_DATA = "SSLKIT_REQUIRE_SHARED_DATA"
DETECTRON2_HINT = ("detectron2 is not installed (it is on no registry: SSLKIT_DETECTRON2=<wheel folder> or "
                   "SSLKIT_DETECTRON2=git bash tools/setup_env.sh, or pip install --no-build-isolation "
                   "'git+https://github.com/facebookresearch/detectron2.git')")


def _required(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


def shared_data(name: str) -> Path:
    """A folder of ../shared/data (small real datasets); skips the test when absent (fails when required)."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"real-data folder {path} is absent (a fresh clone has no ../shared/data)"
        if _required(REQUIRE_SHARED_DATA):
            pytest.fail(f"{message}, and {REQUIRE_SHARED_DATA} is set")
        pytest.skip(message)
    return path


_detectron2_problem = []  # memo: [None] when detectron2 imports with its compiled ops, else [reason]


def detectron2_problem():
    """None when detectron2 and its compiled ops import; else why not. Imported at test set-up only,
    so that collecting the tests stays light."""
    if not _detectron2_problem:
        import importlib.util

        if importlib.util.find_spec("detectron2") is None:
            _detectron2_problem.append(DETECTRON2_HINT)
        else:
            try:
                import detectron2._C  # noqa: F401  (the compiled ops: fails against another torch)
                _detectron2_problem.append(None)
            except Exception as e:  # a broken install is a failure to report, not a skip
                _detectron2_problem.append(f"detectron2 is installed but does not import: {type(e).__name__}: {e}")
    return _detectron2_problem[0]


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), each worker and the tools it starts run one
    OpenMP thread: two workers of two threads each on two cores slow torch down many-fold. Set before
    any test imports torch, so torch starts with it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The files with the most ``slow`` tests first, each file's tests in their order: ``--dist loadfile`` hands
    whole files to the workers in this order, so the long ones start early and the short ones fill in at the end,
    instead of one worker finishing a long file alone (longest first: the usual cure for such a tail)."""
    slow: dict = {}
    for item in items:
        slow[item.fspath] = slow.get(item.fspath, 0) + (item.get_closest_marker("slow") is not None)
    first = {path: rank for rank, path in enumerate(slow)}  # ties keep the collection's order
    items.sort(key=lambda item: (-slow[item.fspath], first[item.fspath]))  # stable: each file's order kept


def pytest_runtest_setup(item):
    """Tests marked ``detectron2`` skip without it, or fail where ``SSLKIT_REQUIRE_DETECTRON2`` is set."""
    if item.get_closest_marker("detectron2") is None:
        return
    problem = detectron2_problem()
    if problem is None:
        return
    if _required(REQUIRE_DETECTRON2) or problem.startswith("detectron2 is installed"):
        pytest.fail(f"{problem}" + (f" ({REQUIRE_DETECTRON2} is set)" if _required(REQUIRE_DETECTRON2) else ""),
                    pytrace=False)
    pytest.skip(problem)


def free_port() -> str:
    """A TCP port nobody listens on now, for a torchrun rendezvous: a fixed port fails when another run
    (or a previous one's socket in TIME_WAIT) holds it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_tool(*args, cwd=REPO, timeout=600, env=None, check=True):
    """Run ``python tools/<script> ...`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def tiny_mae_overrides(tmp_path):
    """Overrides that make MAE pretraining take seconds on a CPU."""
    return [
        "model.arch=mae_vit_pico_patch8", "model.decoder_depth=1", "model.decoder_embed_dim=32",
        "model.decoder_num_heads=2", "data.img_size=32", "data.synthetic=true", "data.synthetic_images=32", "data.num_workers=0",
        "train.batch_size=8", "train.epochs=2", "train.device=cpu", "train.progress=false",
        "train.tensorboard=false", "optim.warmup_epochs=1", "train.log_every=1", f"train.output_dir={tmp_path}/run",
    ]


@pytest.fixture
def tiny_mocov3_checkpoint(tmp_path):
    """A MoCo v3 ViT-pico/8 pretrained for one epoch of four steps at 32 px: the project's checkpoint (its
    authors' layout) for the transfer tools."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    Trainer(load_config(None, [
        "model.arch=vit_pico", "model.dim=32", "model.mlp_dim=64", "data.img_size=32", "data.synthetic=true",
        "data.synthetic_images=32", "data.num_workers=0", "train.batch_size=8", "train.epochs=1", "train.device=cpu",
        "train.progress=false", "train.tensorboard=false", "optim.warmup_epochs=0",
        f"train.output_dir={tmp_path}/mocov3"], method="mocov3")).fit()
    return tmp_path / "mocov3" / "checkpoint_last.pth.tar"


# Two processes' OpenMP threads fighting over two cores slow detectron2 and the probes down ten-fold: one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    """This process at one intra-op thread for the test (torch imported here: collection stays light)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# yacs files laid out as the MoCo authors publish their detection recipes (their repository's
# detection/configs/: a shared base with the extra-norm C4 head, then one file a recipe with the
# MoCo input settings: RGB, ImageNet mean / std in 0-255 units, torchvision's stride in the 3x3),
# which users run with tools/train_net.py; the project's own recipes are LazyConfigs.
MOCO_YACS = {
    "Base-RCNN-C4-BN.yaml": """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RPN:
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "Res5ROIHeadsExtraNorm"
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    NORM: "naiveSyncBN"
TEST:
  PRECISE_BN:
    ENABLED: True
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
""",
    "pascal_voc_R_50_C4_24k_moco.yaml": """
_BASE_: "Base-RCNN-C4-BN.yaml"
MODEL:
  MASK_ON: False
  WEIGHTS: "moco_v2_800ep_pretrain.pth.tar"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  ROI_HEADS:
    NUM_CLASSES: 20
  RESNETS:
    STRIDE_IN_1X1: False
INPUT:
  FORMAT: "RGB"
  MIN_SIZE_TRAIN: (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
  MIN_SIZE_TEST: 800
DATASETS:
  TRAIN: ("voc_2007_trainval", "voc_2012_trainval")
  TEST: ("voc_2007_test",)
SOLVER:
  STEPS: (18000, 22000)
  MAX_ITER: 24000
  WARMUP_ITERS: 100
""",
    "coco_R_50_C4_2x_moco.yaml": """
_BASE_: "Base-RCNN-C4-BN.yaml"
MODEL:
  MASK_ON: True
  WEIGHTS: "moco_v2_800ep_pretrain.pth.tar"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    STRIDE_IN_1X1: False
INPUT:
  FORMAT: "RGB"
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
  MIN_SIZE_TEST: 800
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  STEPS: (120000, 160000)
  MAX_ITER: 180000
""",
    # CPU-sized, as configs/detectron2/tiny/mask_rcnn_R_18_C4.py: R18-C4 at 128 px, BN.
    "tiny_R_18_C4_moco.yaml": """
_BASE_: "Base-RCNN-C4-BN.yaml"
MODEL:
  MASK_ON: True
  WEIGHTS: ""
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
    NORM: "BN"
    STRIDE_IN_1X1: False
  ANCHOR_GENERATOR:
    SIZES: [[16, 32, 64, 128]]
  RPN:
    BATCH_SIZE_PER_IMAGE: 64
    PRE_NMS_TOPK_TRAIN: 600
    PRE_NMS_TOPK_TEST: 300
    POST_NMS_TOPK_TRAIN: 300
    POST_NMS_TOPK_TEST: 100
  ROI_HEADS:
    BATCH_SIZE_PER_IMAGE: 16
    SCORE_THRESH_TEST: 0.0
  ROI_BOX_HEAD:
    POOLER_RESOLUTION: 8
  ROI_MASK_HEAD:
    CONV_DIM: 64
INPUT:
  FORMAT: "RGB"
  MIN_SIZE_TRAIN: (96, 112, 128)
  MAX_SIZE_TRAIN: 128
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 128
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_BATCH: 4
  MAX_ITER: 100
  LR_SCHEDULER_NAME: "WarmupCosineLR"
  WARMUP_ITERS: 10
  WARMUP_FACTOR: 0.01
  CHECKPOINT_PERIOD: 1000
TEST:
  PRECISE_BN:
    ENABLED: False
""",
}


@pytest.fixture(scope="module")
def moco_r18(tmp_path_factory) -> Path:
    """A MoCo v2 ResNet-18 pretraining checkpoint (random weights, K = 16) in the authors' layout."""
    import torch

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint

    torch.manual_seed(0)
    return save_atomic(moco_checkpoint(build_moco("resnet18", K=16, mlp=True), "resnet18", 200),
                       tmp_path_factory.mktemp("moco") / "moco_v2_r18.pth.tar")


@pytest.fixture(scope="session")
def moco_yacs(tmp_path_factory) -> Path:
    """A folder of the MoCo authors'-style yacs files (``MOCO_YACS``)."""
    folder = tmp_path_factory.mktemp("moco_yacs")
    for name, text in MOCO_YACS.items():
        (folder / name).write_text(text.lstrip())
    return folder
