"""LVIS in detectron2's recipes (its LVIS configs, ViTDet's LVIS configs): repeat-factor sampling of the
training images by their rarest category (threshold 0.001), up to 300 detections per image, and the federated
evaluation of the ``lvis`` package (detectron2's ``LVISEvaluator``); ViTDet adds sigmoid classification with the
federated loss (class weights: image counts ** 0.5). Dataset names may be detectron2's (``lvis_v1_train``, under
``$DETECTRON2_DATASETS``) or ``lvis:JSON[:IMAGE_ROOT]`` (``transfer.detection.formats``)."""
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import LVISEvaluator

from transfer.detection.formats import fed_loss_cls_weights


def lvis_loader(dataloader, version: str):
    """``dataloader`` on LVIS ``version`` (``v0.5``: MoCo's Table 6; ``v1``: ViTDet's) train / val."""
    dataloader.train.dataset.names = f"lvis_{version}_train"
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001))
    dataloader.test.dataset.names = f"lvis_{version}_val"
    dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)
    return dataloader


def lvis_heads(model, num_classes: int, score_thresh: float, federated: bool = False):
    """The box predictor of an LVIS recipe: ``num_classes`` (the data's, when it says otherwise), 300 detections
    from ``score_thresh``; ``federated``: sigmoid classification and the federated loss (ViTDet)."""
    model.roi_heads.num_classes = num_classes
    model.roi_heads.box_predictor.update(test_score_thresh=score_thresh, test_topk_per_image=300)
    if federated:
        # The training sets by interpolation, so that the ones a run names (--train-dataset) weigh the classes.
        model.roi_heads.box_predictor.update(
            use_sigmoid_ce=True, use_fed_loss=True,
            get_fed_loss_cls_weights=L(fed_loss_cls_weights)(dataset_names="${dataloader.train.dataset.names}",
                                                             freq_weight_power=0.5))
    return model
