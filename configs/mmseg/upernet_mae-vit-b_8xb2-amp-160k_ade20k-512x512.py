# UperNet + MAE ViT-B/16 on ADE20K, the MAE paper's segmentation transfer (48.1 mIoU),
# as mmseg's own recipe (mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py):
#   512x512 crops, 160k iterations, batch 16 (8 GPUs x 2), AdamW lr 1e-4, weight decay 0.05,
#   layer-wise lr decay 0.65, drop path 0.1, mixed precision, relative position bias (zero init),
#   layer scale 1.0, maps of blocks 3/5/7/11 -> Feature2Pyramid (x4, x2, x1, x0.5) -> UPerHead,
#   sliding-window test (512 crops, stride 341).
# The backbone is mmseg's MAE behind MAEViTEncoder, which reads the authors' MAE files
# (mae_pretrain_vit_base.pth or a full checkpoint-*.pth) and the project's pretraining
# checkpoints directly; the absolute position table is resized from 14x14 to 32x32.
_base_ = ["mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py", "./_base_/sslkit.py"]

model = dict(
    pretrained=None,  # mmseg's converted-file path; the checkpoint goes to the backbone below
    backbone=dict(
        type="MAEViTEncoder",
        with_cp=False,  # True: activation checkpointing of the 12 layers (less memory, ~1/3 more backbone compute)
        init_cfg=dict(type="Pretrained", checkpoint="pretrained/mae_pretrain_vit_base.pth")),
    # mmseg's Feature2Pyramid default, named so that the CPU fallback (SyncBN -> BN) sees it
    neck=dict(norm_cfg=dict(type="SyncBN", requires_grad=True)))

# mmseg's MAE config asks for mixed precision with a legacy `fp16` key that mmengine's Runner
# ignores; AmpOptimWrapper is what turns it on. LearningRateDecayOptimizerConstructor is the
# non-deprecated name of the LayerDecayOptimizerConstructor the mmseg config uses (same groups:
# block i gets lr * 0.65 ** (12 - i), the embeddings 0.65 ** 13, neck and heads lr).
optim_wrapper = dict(
    _delete_=True,
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LearningRateDecayOptimizerConstructor",
    paramwise_cfg=dict(num_layers=12, decay_rate=0.65, decay_type="layer_wise"))

sslkit_results = dict(backbone="vit_base_patch16", pretrain="mae")
