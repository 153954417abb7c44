"""What the CPU-sized variants share: 128 px images, 4 per batch, short cosine schedules.

Each tiny config is its family's recipe with smaller numbers (backbone width and
depth, channels, image size, iterations), the same modules and the same
initialisation path, so that a run in minutes on a CPU exercises what a full
run does. ``--max-iters`` rescales the whole schedule (cosine, warm-up as a
fraction). BN instead of SyncBN: one process.
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

image_size = 128


def tiny_train(train, max_iter=100):
    train.update(max_iter=max_iter, eval_period=0, log_period=10, init_checkpoint="")
    train.checkpointer.update(period=max(max_iter, 1000), max_to_keep=2)
    train.amp.enabled = False
    train.ddp.fp16_compression = False
    train.pop("precise_bn", None)
    return train


def tiny_loader(dataloader, batch=4):
    dataloader.train.update(total_batch_size=batch, num_workers=0)
    dataloader.test.num_workers = 0
    return dataloader


lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=0.1,
    warmup_factor=0.01,
)
