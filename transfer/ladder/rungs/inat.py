"""MAE's Table 6, iNaturalist 2017 / 2018 / 2019: end-to-end fine-tuning with the ImageNet recipe (mae_transfer.py).
Top-1 on each year's validation split; the train / val image counts are the releases'."""
from transfer.ladder.rung import register
from transfer.ladder.rungs.mae_transfer import MAETransferRung, transfer_recipes


class INaturalist(MAETransferRung):
    source = "the year's train / val json"


@register
class INat2017(INaturalist):
    name = data = "inat2017"
    order = 71.1
    classes = 5089  # 579,184 train / 95,986 val images
    metrics = {"inat2017_finetune": "top1"}
    recipes = transfer_recipes("inat2017", train_images=579_184)


@register
class INat2018(INaturalist):
    name = data = "inat2018"
    order = 71.2
    classes = 8142  # 437,513 train / 24,426 val images
    metrics = {"inat2018_finetune": "top1"}
    recipes = transfer_recipes("inat2018", train_images=437_513)


@register
class INat2019(INaturalist):
    name = data = "inat2019"
    order = 71.3
    classes = 1010  # 265,213 train / 3,030 val images
    metrics = {"inat2019_finetune": "top1"}
    recipes = transfer_recipes("inat2019", train_images=265_213)
