from mmseg.datasets import BaseSegDataset, COCOStuffDataset
from mmseg.registry import DATASETS

_COCO_THINGS = 80  # COCOStuffDataset lists the 80 thing classes first, in COCO category order


@DATASETS.register_module()
class COCOObjectDataset(BaseSegDataset):
    """COCO-Object: background plus the 80 COCO thing classes (81 classes), on COCO val2017.

    The label maps ``<id>_instanceTrainIds.png`` are derived from COCO-Stuff164k's raw maps by
    ``tools/dataset_converters/coco_object.py``: class 0 is background (every stuff class), 1..80
    are the things. Background is a class here, so ``reduce_zero_label`` stays False.
    """
    METAINFO = dict(
        classes=('background', ) + tuple(COCOStuffDataset.METAINFO['classes'][:_COCO_THINGS]),
        palette=[[0, 0, 0]] + list(COCOStuffDataset.METAINFO['palette'][:_COCO_THINGS]))

    def __init__(self,
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '_instanceTrainIds.png',
                 reduce_zero_label: bool = False,
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs)
