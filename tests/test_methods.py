"""The contract every registered pretraining method keeps (``pretrain.methods``), tested for each of them.

Parametrised over the registry: a new method file is tested here without new test code. It needs a
CPU config (``configs/pretrain/*_cpu.yaml`` with its ``method:``) that, shrunk by ``TINY``, trains a
couple of steps in seconds; ``ADJUST`` holds what a method needs beyond that at the tiny size.
"""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from pretrain.methods import get_method, method_of, methods

METHODS = sorted(methods())
CPU_CONFIGS = sorted((REPO / "configs" / "pretrain").glob("*_cpu.yaml"))

TINY = ["data.img_size=32", "data.synthetic_images=16", "data.num_workers=0", "train.batch_size=8", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false", "train.log_every=1"]
# What the tiny size needs per method: MoCo's queue must be a multiple of the batch, and its split BN divide it.
ADJUST = {"moco": ["model.queue_size=32", "model.bn_splits=2"]}
STEPS = 2  # 16 images / batch 8, one epoch


def cpu_config(name):
    """The first CPU config whose ``method:`` is ``name`` (None: there is none)."""
    return next((p for p in CPU_CONFIGS if OmegaConf.load(p).get("method") == name), None)


def test_the_registry_finds_the_methods():
    assert {"mae", "moco", "mocov3"} <= set(METHODS)
    for name in METHODS:
        method = get_method(name)
        assert method.name == name and method.config_schema.method == name
    with pytest.raises(ValueError, match="unknown pretraining method"):
        get_method("no_such_method")


@pytest.mark.parametrize("name", METHODS)
def test_a_cpu_config_exists(name):
    from pretrain.config import load_config

    path = cpu_config(name)
    assert path is not None, f"no configs/pretrain/*_cpu.yaml has method: {name}"
    cfg = load_config(path)
    assert cfg.method == name and cfg.data.synthetic and cfg.train.device == "cpu"


@pytest.mark.parametrize("name", METHODS)
def test_the_schema_rejects_unknown_keys(name, tmp_path):
    import re

    from pretrain.config import ConfigError, load_config

    # (override, what the error names): the full key, or the unknown section.
    for item, named in (("model.not_a_key=1", "model.not_a_key"), ("train.not_a_key=1", "train.not_a_key"),
                        ("optim.betaz=1", "optim.betaz"), ("not_a_section.key=1", "not_a_section")):
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_config(cpu_config(name), [item])
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_config(None, ["data.synthetic=true", item], method=name)
    # In a file: the error names the file and the key.
    raw = OmegaConf.load(cpu_config(name))
    raw.model.not_a_key = 1
    bad = tmp_path / "typo.yaml"
    OmegaConf.save(raw, bad)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}.*model\.not_a_key"):
        load_config(bad)
    # Another method's model keys are not this one's.
    own = set(OmegaConf.structured(methods()[name].config_schema).model)
    for other in METHODS:
        foreign = set(OmegaConf.structured(methods()[other].config_schema).model) - own
        for key in sorted(foreign)[:1]:
            with pytest.raises(ConfigError, match=re.escape(f"model.{key}")):
                load_config(cpu_config(name), [f"model.{key}=1"])


@pytest.fixture(scope="module", params=METHODS)
def trained(request, tmp_path_factory):
    """(method name, its config, the trainer after a tiny run), one run per method for all the tests."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    name = request.param
    out = tmp_path_factory.mktemp(f"run_{name}")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(cpu_config(name), TINY + ADJUST.get(name, []) + [f"train.output_dir={out}"])
        trainer = Trainer(cfg)
        trainer.fit()
    finally:
        torch.set_num_threads(n)
    return name, cfg, trainer


def test_trains_a_couple_of_steps(trained):
    name, cfg, trainer = trained
    assert trainer.step == STEPS and trainer.epoch == 1 and not trainer.stopped
    records = [json.loads(line) for line in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_checkpoints_are_recognised(trained):
    from pretrain.checkpoint import load_file

    name, cfg, trainer = trained
    method = get_method(name)
    for tag in (0, "last"):
        path = trainer.out / method.checkpoint_name(tag)
        assert path.is_file(), path
        ckpt = load_file(path)
        assert type(method_of(ckpt)) is type(method)
        assert method.epochs_done(ckpt) == 1
        # The authors' file: the same without what the project's trainer adds.
        authors = {k: v for k, v in ckpt.items() if k not in ("config", "trainer", "optimizer")}
        claimants = [other for other, cls in methods().items() if cls.claims(authors, str(path))]
        assert claimants == [name]
        assert type(method_of(authors, str(path))) is type(method)
        assert method.epochs_done(authors) == 1


def test_exports_its_backbone(trained):
    name, cfg, trainer = trained
    from pretrain.backbones import read_backbone

    method = get_method(name)
    path = trainer.out / method.checkpoint_name(0)
    export = read_backbone(str(path))
    p = export.provenance
    assert p.method == name and export.label == method.label(cfg) and p.epochs == 1 and p.data == "synthetic"
    assert p.source == str(path)
    assert export.family in ("vit", "resnet") and export.state_dict


def test_saved_backbone_loads_in_timm_and_computes_the_features(trained, tmp_path, one_thread):
    import timm

    from pretrain.backbones import read_backbone

    name, cfg, trainer = trained
    method = get_method(name)
    export = read_backbone(str(trainer.out / method.checkpoint_name("last")))
    folder = export.save(tmp_path / "backbone")
    net = timm.create_model(f"local-dir:{folder}", pretrained=True)  # without pretrained=True: random weights
    assert net.num_classes == 0
    model = trainer.model
    net.eval(), model.eval()
    try:
        x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(net(x), method.features(model, x), atol=1e-5)
    finally:
        model.train()
    # The folder the run wrote at its end is the same backbone.
    written = read_backbone(trainer.out / "backbone")
    assert set(written.state_dict) == set(export.state_dict)
    for k, v in export.state_dict.items():
        assert torch.equal(written.state_dict[k], v), k
    assert written.provenance.method == name and written.provenance.epochs == 1
