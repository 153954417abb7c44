"""MAE's Table 6, Places205 and Places365: end-to-end fine-tuning with the ImageNet recipe (mae_transfer.py).
Top-1 on the validation split; Places365 is the Standard release (1.8 M training images, not the Challenge's 8 M)."""
from transfer.ladder.rung import register
from transfer.ladder.rungs.mae_transfer import MAETransferRung, transfer_recipes


class Places(MAETransferRung):
    source = "the release's train / val lists"


@register
class Places205(Places):
    name = data = "places205"
    order = 72.1
    classes = 205  # 2,448,873 train / 20,500 val images
    metrics = {"places205_finetune": "top1"}
    recipes = transfer_recipes("places205", train_images=2_448_873)


@register
class Places365(Places):
    name = data = "places365"
    order = 72.2
    classes = 365  # 1,803,460 train / 36,500 val images
    metrics = {"places365_finetune": "top1"}
    recipes = transfer_recipes("places365", train_images=1_803_460)
