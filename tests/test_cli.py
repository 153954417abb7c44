"""The four training tools share their run flags (pretrain.cli): --output-dir, --max-iters, --resume [auto|PATH]
and --eval-only reach each tool's own config keys, and the former spellings (--max-iter, --work-dir, --iters)
still do. Parse-only: nothing trains."""
import importlib.util
import re
import signal

import pytest

from conftest import REPO

TINY_SEG = REPO / "configs" / "mmseg" / "tiny" / "upernet_r18_folder-64x64.py"
TINY_DET = REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_R_18_C4.py"
needs_mmseg = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")


def tool(name):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"")
    return path


@pytest.fixture
def trainer_of(monkeypatch):
    """Runs a tool's main() with its trainer class replaced by a recorder: returns (config, trainer keywords)."""

    def run(name, trainer_class, argv):
        made = []

        class Recorder:
            def __init__(self, cfg, **kwargs):
                made.append((cfg, kwargs))

            def request_stop(self, *_):
                pass

            def fit(self):
                pass

            def run_eval_only(self):
                pass

        monkeypatch.setattr(trainer_class, Recorder)
        monkeypatch.setattr(signal, "signal", lambda *_: None)  # the tool's handlers stay out of pytest
        tool(name).main([str(a) for a in argv])
        (cfg, kwargs), = made
        return cfg, kwargs

    return run


# ------------------------------------------------------------------ pretraining, classification
def test_pretrain_net_run_flags(trainer_of, tmp_path, checkpoint):
    def pretrain(*argv):
        return trainer_of("pretrain_net", "pretrain.trainer.Trainer", ["--method", "mae", "data.synthetic=true", *argv])

    cfg, kw = pretrain("train.output_dir=elsewhere", "--output-dir", tmp_path, "--max-iters", 3, "--resume")
    assert (cfg.train.output_dir, cfg.train.max_iters, kw["resume"]) == (str(tmp_path), 3, "auto")  # flags win
    cfg, kw = pretrain("--resume", checkpoint)
    assert (cfg.train.output_dir, cfg.train.max_iters, kw["resume"]) == ("output/pretrain", None, str(checkpoint))
    cfg, kw = pretrain("--resume", "train.epochs=2")  # an override after the flag is not a path
    assert (cfg.train.epochs, kw["resume"]) == (2, "auto")
    with pytest.raises(SystemExit):  # no evaluation of its own
        pretrain("--eval-only")


def test_train_cls_run_flags(trainer_of, tmp_path, checkpoint):
    def classify(*argv):
        return trainer_of("train_cls", "transfer.classification.engine.ClassificationTrainer",
                          ["--protocol", "moco_linear", "data.synthetic=true", *argv])

    cfg, kw = classify("train.output_dir=elsewhere", "--output-dir", tmp_path, "--max-iters", 5)
    assert (cfg.train.output_dir, cfg.train.max_iters) == (str(tmp_path), 5)
    assert kw == {"resume": None, "eval_only": False}
    cfg, kw = classify("--eval-only", "--resume", checkpoint)
    assert kw == {"resume": str(checkpoint), "eval_only": True}
    cfg, kw = classify("--resume", "train.epochs=2")
    assert (cfg.train.epochs, kw["resume"]) == (2, "auto")


# ------------------------------------------------------------------ detectron2
def test_train_net_run_flags_parse(checkpoint, capsys):
    parse = tool("train_net").parse_args
    common = ["--config-file", str(TINY_DET)]
    args = parse([*common, "--output-dir", "out", "--max-iters", "7", "--eval-only", "--resume"])
    assert (args.output_dir, args.max_iters, args.eval_only, args.resume) == ("out", 7, True, "auto")
    assert parse([*common, "--max-iter", "7"]).max_iters == 7  # the former spelling
    assert parse([*common, "--resume", str(checkpoint)]).resume == str(checkpoint)
    # An override right after --resume goes back to the overrides, in its place: key=value or a yacs pair.
    args = parse([*common, "--resume", "train.max_iter=9", "train.seed=1"])
    assert (args.resume, args.opts) == ("auto", ["train.max_iter=9", "train.seed=1"])
    args = parse([*common, "--resume", "SOLVER.MAX_ITER", "9"])
    assert (args.resume, args.opts) == ("auto", ["SOLVER.MAX_ITER", "9"])
    with pytest.raises(SystemExit):
        parse([*common, "--resume", "no_such_checkpoint.pth"])
    assert "checkpoint not found: no_such_checkpoint.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[-1]  # after the description
    assert "--max-iters N" in options and "--resume [auto|PATH]" in options
    assert not re.search(r"--max-iter\b", options)  # the alias stays hidden


@pytest.mark.detectron2
@pytest.mark.parametrize("flag", ["--max-iters", "--max-iter"])
def test_train_net_run_flags_reach_lazyconfig_and_yacs_keys(moco_yacs, tmp_path, flag):
    t = tool("train_net")
    lazy = t.load_recipe(t.parse_args(["--config-file", str(TINY_DET), "--output-dir", str(tmp_path), flag, "7",
                                       "--device", "cpu"]))
    assert (lazy.cfg.train.output_dir, lazy.cfg.train.max_iter) == (str(tmp_path), 7)
    yacs = t.load_recipe(t.parse_args(["--config-file", str(moco_yacs / "tiny_R_18_C4_moco.yaml"), "--output-dir",
                                       str(tmp_path), flag, "7", "--device", "cpu"]))
    assert (yacs.cfg.OUTPUT_DIR, yacs.cfg.SOLVER.MAX_ITER) == (str(tmp_path), 7)
    yacs = t.load_recipe(t.parse_args(["--config-file", str(moco_yacs / "tiny_R_18_C4_moco.yaml"), "--device", "cpu",
                                       "--resume", "SOLVER.MAX_ITER", "9"]))
    assert yacs.cfg.SOLVER.MAX_ITER == 9


# ------------------------------------------------------------------ mmseg
@needs_mmseg
@pytest.mark.parametrize("output_flag,iters_flag", [("--output-dir", "--max-iters"), ("--work-dir", "--iters")])
def test_train_seg_run_flags(tmp_path, checkpoint, output_flag, iters_flag):
    t = tool("train_seg")
    args = t.parse_args([str(TINY_SEG), "--data-root", str(tmp_path), "--classes", "a,b,c",
                         output_flag, str(tmp_path / "work"), iters_flag, "16", "--eval-only", "--resume",
                         str(checkpoint)])
    assert (args.eval_only, args.resume) == (True, str(checkpoint))
    cfg, _ = t.build_config(args)
    assert cfg.work_dir == str(tmp_path / "work")
    assert cfg.train_cfg.max_iters == 16 and cfg.param_scheduler[-1].end == 16
    assert t.parse_args([str(TINY_SEG), "--resume"]).resume == "auto"


@needs_mmseg
def test_the_ladder_resumes_each_tool_with_its_config_intact(tmp_path):
    """A ladder job that started before is relaunched with the tool's --resume where the flag cannot take the
    config's path for its own value."""
    from transfer.ladder import Job, launch_command

    seg = Job("segmentation", None, 0, str(tmp_path / "seg"),
              ["tools/train_seg.py", str(TINY_SEG), "--random-init", "--output-dir", str(tmp_path / "seg")], 1, 0.0,
              "semantic_seg")
    args = tool("train_seg").parse_args(launch_command(seg, resume=True)[2:])
    assert (args.config, args.resume, args.output_dir) == (str(TINY_SEG), "auto", str(tmp_path / "seg"))
    det = Job("detection", None, 0, str(tmp_path / "det"),
              ["tools/train_net.py", "--config-file", str(TINY_DET), "--random-init", "train.seed=0"], 1, 0.0,
              "coco_instance_seg")
    cmd = launch_command(det, resume=True)
    args = tool("train_net").parse_args(cmd[cmd.index("tools/train_net.py") + 1:])
    assert (args.config_file, args.resume) == (str(TINY_DET), "auto")
