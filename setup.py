"""sslkit: pretrain MAE and MoCo backbones and measure what they transfer to.

Install with ``bash tools/setup_env.sh`` (pinned environment, mmcv with compiled
ops); ``pip install -e .`` alone installs only the light dependencies below.
"""
from setuptools import find_packages, setup

setup(
    name="sslkit",
    version="0.1.0",
    description="MAE and MoCo pretraining, and transfer to detectron2 / mmsegmentation",
    python_requires=">=3.10",
    packages=find_packages(include=["pretrain", "pretrain.*", "transfer", "transfer.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0",
        "omegaconf>=2.3",
        "safetensors",
        "tqdm",
        "matplotlib",
        "pycocotools",
        "simplejpeg",
        # its wheel bundles libturbojpeg 3 (region decoding, pretrain/jpeg_region.py); x86-64 wheels only
        'turbojpeg; platform_machine == "x86_64"',
    ],
    extras_require={
        # mmcv needs compiled ops: see tools/setup_env.sh for how it is built.
        "seg": ["mmengine==0.10.7", "mmsegmentation==1.2.2", "ftfy", "regex"],
        # detectron2 is on no registry: pip install --no-build-isolation
        #   'git+https://github.com/facebookresearch/detectron2.git'
        # LVIS's and Cityscapes' own evaluations, for detectron2 (tools/setup_env.sh installs them --no-deps:
        # cityscapesscripts' viewer / download dependencies are not used)
        "d2-datasets": ["lvis==0.5.3", "cityscapesscripts==2.3.0", "pyquaternion==0.9.9"],
        "test": ["pytest"],
        # data.backend=dali: decoding and crops on the GPU (CUDA 12).
        "dali": ["nvidia-dali-cuda120==2.4.0"],
    },
)
