# A short iteration-based run for CPUs: tests and demos (tens of iterations, seconds each).
_base_ = ["mmseg::_base_/default_runtime.py", "../../_base_/sslkit.py"]

max_iters = 40
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=max_iters // 8),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=max_iters // 8, end=max_iters),
]
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
