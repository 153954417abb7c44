"""transfer/segmentation/runner.py: schedules for any iteration count, the CPU fallback for SyncBN that
no config names, and the checks of a run's inputs made before mmengine's Runner starts."""
import copy
import importlib.util

import numpy as np
import pytest

from conftest import REPO, shared_data

# mmseg is looked up, not imported: collection stays light.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)"),
              pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::UserWarning")]

MAE_B = REPO / "configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py"
TINY_R18 = REPO / "configs/mmseg/tiny/upernet_r18_folder-64x64.py"
TINY_VIT = REPO / "configs/mmseg/tiny/upernet_vit-pico_folder-64x64.py"


def load(path):
    from transfer.segmentation.runner import load_seg_config

    return load_seg_config(path)


def lr_schedulers(cfg):
    """The config's lr schedulers, built as mmengine's Runner builds them (it refuses end <= begin)."""
    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS, init_default_scope

    init_default_scope("mmseg")
    wrapper = OptimWrapper(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    return wrapper, [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]


@pytest.mark.parametrize("path", [MAE_B, TINY_R18], ids=lambda p: p.stem)
@pytest.mark.parametrize("iters", [1, 2, 3, 7])
def test_any_positive_iteration_count_gives_a_valid_schedule(path, iters):
    from transfer.segmentation.runner import set_iterations

    cfg = load(path)
    set_iterations(cfg, iters)
    windows = [(s.begin, s.end) for s in cfg.param_scheduler]
    assert windows[0][0] == 0 and all(0 <= b < e <= iters for b, e in windows), windows
    assert all(e == b for (_, e), (b, _) in zip(windows, windows[1:])), windows  # phases follow each other
    wrapper, schedulers = lr_schedulers(cfg)
    lrs = []
    for _ in range(iters):  # the lr an iteration trains with, then the schedulers' step, as mmengine's hook
        lrs.append(wrapper.param_groups[0]["lr"])
        for s in schedulers:
            s.step()
    assert all(0 <= lr <= 1.0 for lr in lrs) and lrs[0] > 0, lrs  # (poly decays to 0 at the last iteration)
    if iters == 1:  # the warm-up's first iteration: its start factor
        assert windows == [(0, 1)] and lrs[0] == pytest.approx(cfg.param_scheduler[0].start_factor)


def test_the_cpu_fallback_names_feature2pyramids_default_norm():
    """mmseg's MAE config leaves Feature2Pyramid's norm to its class default, SyncBN: on CPUs it is BN."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from torch import nn

    from transfer.segmentation.runner import adapt_to_device

    cfg = load(MAE_B)
    cfg.model.neck.pop("norm_cfg", None)  # as mmseg's own config has it
    assert adapt_to_device(copy.deepcopy(cfg), cuda=True) == []
    adapt_to_device(cfg, cuda=False)
    assert cfg.model.neck.norm_cfg.type == "BN" and "SyncBN" not in str(cfg.model.to_dict())
    init_default_scope("mmseg")
    neck = MODELS.build(cfg.model.neck)
    norms = [type(m) for m in neck.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and nn.SyncBatchNorm not in norms


def test_the_cpu_runner_reverts_syncbn_left_to_class_defaults():
    """The safety net: SyncBatchNorm layers that no config walk sees become BatchNorm after the build,
    with the same parameters and statistics, and the segmentor still runs."""
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from torch import nn

    from transfer.segmentation.runner import CPURunner, sync_bn_to_bn

    cfg = load(TINY_VIT)
    # The MAE recipe's rescales (x4 has the norm layer), its norm left to Feature2Pyramid's default.
    cfg.model.neck = dict(type="Feature2Pyramid", embed_dim=96, rescales=[4, 2, 1, 0.5])
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    synced = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(synced) == 1
    with torch.no_grad():
        synced[0].weight.uniform_()
        synced[0].running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = sync_bn_to_bn(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64), mode="tensor").shape[-3] == cfg.model.decode_head.num_classes
    # CPURunner builds with it (a Runner without its __init__: build_model reads no runner state).
    built = CPURunner.__new__(CPURunner).build_model(cfg.model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in built.modules())


def write_ade_layout(root, names, labelled):
    """An ADE20K-layout folder: images/training/<name>.jpg, annotations/training/<name>.png for ``labelled``."""
    from PIL import Image

    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i, name in enumerate(names):
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / "images" / split / f"{name}.jpg")
            if name in labelled:
                Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "annotations" / split / f"{name}.png")


def test_check_data_reads_the_splits_as_mmseg_does(tmp_path):
    from pretrain.errors import DataError, InputNotFound
    from transfer.segmentation.runner import check_data, set_data

    cfg = load(REPO / "configs/mmseg/tiny/upernet_r18_ade20k-64x64.py")
    set_data(cfg, shared_data("ade20k_sample") / "ADEChallengeData2016")
    assert check_data(cfg) == {"train": 3, "val": 3}  # test_dataloader is val_dataloader
    set_data(cfg, tmp_path / "ade")
    with pytest.raises(InputNotFound, match="dataset root not found"):
        check_data(cfg)
    write_ade_layout(tmp_path / "ade", ["a", "b", "c"], labelled={"a"})
    with pytest.raises(DataError, match=r"2 of 3 images of the train split's ADE20KDataset have no label map"):
        check_data(cfg)
    assert check_data(cfg, ("nope",)) == {}  # splits the config has not: nothing to check
