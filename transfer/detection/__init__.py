"""detectron2 transfer: MAE ViTs (ViTDet) and MoCo ResNets as detectron2 backbones.

detectron2 is on no package registry; ``SSLKIT_DETECTRON2=git bash tools/setup_env.sh``
installs it from its repository (or from a folder holding its wheel) with its pinned
needs (``requirements-detectron2.txt``; the project's requirements already hold
``shapely``, which its large-scale-jitter crop of polygons needs, and omegaconf /
iopath versions it accepts).

Nothing here imports it at import time: call ``require_detectron2()`` first.

* ``convert``      checkpoints -> detectron2 ViT / ResNet weights, with a report
* ``checkpoint``   detectron2's checkpointer, reading pretraining checkpoints safely
* ``backbones``    backbone parts the LazyConfigs take beyond detectron2's
* ``roi_heads``    MoCo's C4 head with an extra norm after res5 (``ROI_HEADS_REGISTRY``)
* ``config``       ``get_cfg()`` for yacs files: the MoCo authors' recipes, with that head registered
* ``data``         COCO-format datasets registered by path
* ``engine``       one train / evaluate loop for the LazyConfig recipes and those yacs files
* ``scaling``      detectron2's reference-world-size rule for a recipe run on other GPUs than its own
"""
from __future__ import annotations

INSTALL_HINT = (
    "detectron2 is not installed. It is on no package registry; install it from its repository "
    "into this environment, with its pinned needs:\n"
    "    SSLKIT_DETECTRON2=git bash tools/setup_env.sh     (or SSLKIT_DETECTRON2=<folder with a detectron2 wheel>)\n"
    "or by hand:\n"
    "    .venv/bin/pip install -r requirements-detectron2.txt\n"
    "    .venv/bin/pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)


def detectron2_available() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


def require_detectron2():
    """Import detectron2 or raise ImportError with the install command."""
    try:
        import detectron2
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return detectron2
