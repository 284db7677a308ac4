from mmseg.datasets import PascalVOCDataset
from mmseg.registry import DATASETS


@DATASETS.register_module()
class PascalVOC20Dataset(PascalVOCDataset):
    """PASCAL VOC 2012 without the background class (VOC20).

    Same files as :class:`PascalVOCDataset`; ``reduce_zero_label=True`` turns background (0) into
    ignore (255) and shifts the 20 object classes to 0..19, so only object pixels are scored.
    """
    METAINFO = dict(
        classes=PascalVOCDataset.METAINFO['classes'][1:],
        palette=PascalVOCDataset.METAINFO['palette'][1:])

    def __init__(self, ann_file: str, reduce_zero_label: bool = True, **kwargs) -> None:
        super().__init__(ann_file=ann_file, reduce_zero_label=reduce_zero_label, **kwargs)
