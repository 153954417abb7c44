# Shared by every sslkit mmseg config.
# Registers the project's encoders (MAEViTEncoder, ResNetEncoder) and SegFolderDataset with mmseg.
custom_imports = dict(
    imports=["transfer.segmentation.vit", "transfer.segmentation.resnet", "transfer.segmentation.datasets"], allow_failed_imports=False)
# What tools/train_seg.py writes to <work_dir>/results.json (transfer.results): the task and
# the backbone / pretraining the leaf config evaluates. --random-init records pretrain="random".
sslkit_results = dict(task="ade20k_seg", backbone=None, pretrain=None)
