"""Transfer of pretrained backbones: classification protocols, detectron2 and mmsegmentation.

Framework-specific modules import their framework lazily, so ``import transfer``
works without detectron2 installed.
"""
