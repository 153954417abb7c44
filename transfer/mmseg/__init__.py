"""mmsegmentation transfer: MAE ViTs and MoCo ResNets as mmseg encoders (UperNet on ADE20K).

mmseg / mmcv / mmengine are imported when a submodule is used, not by ``import transfer``.
"""
