#!/usr/bin/env python
"""Print the versions that matter for bug reports: paste the output into an issue."""
import argparse
import importlib
import platform
import sys


def version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
        if hasattr(mod, "__version__"):
            return mod.__version__
        import importlib.metadata as md

        return md.version(module)
    except ImportError:
        return "absent"
    except Exception as e:  # a broken install is worth reporting as such
        return f"broken ({type(e).__name__}: {e})"


def mmcv_ops() -> str:
    try:
        from mmcv.ops import roi_align  # noqa: F401  -- needs the compiled extension
        return "compiled ops load"
    except Exception as e:
        return f"compiled ops DO NOT load ({type(e).__name__}: {str(e).splitlines()[0]})"


def main(argv=None):
    argparse.ArgumentParser(description=__doc__).parse_args(argv)  # --help, and no flag silently ignored
    rows = [("python", sys.version.split()[0] + f" ({platform.platform()})")]
    for mod in ("pretrain", "torch", "torchvision", "timm", "mmcv", "mmengine", "mmseg",
                "detectron2", "numpy", "pycocotools", "omegaconf"):
        rows.append((mod, version(mod)))
    if version("mmcv") != "absent":
        rows.append(("mmcv ops", mmcv_ops()))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("CUDA available", str(cuda)))
        rows.append(("torch CUDA build", str(torch.version.cuda)))
        if cuda:
            rows.append(("GPUs", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
        rows.append(("CPU threads", str(torch.get_num_threads())))
    except ImportError:
        pass
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
