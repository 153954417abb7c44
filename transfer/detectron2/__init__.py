"""detectron2 transfer: MAE ViTs (ViTDet) and MoCo ResNets as detectron2 backbones.

detectron2 is on no package registry; install it from its repository:

    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'

Nothing here imports it at import time: call ``require_detectron2()`` first.
"""
from __future__ import annotations

INSTALL_HINT = (
    "detectron2 is not installed. It is on no package registry; install it from its repository "
    "into this environment:\n"
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
