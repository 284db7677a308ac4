# Cityscapes val (19 classes, labelTrainIds). mmseg layout: see data/README.md.
_base_ = './_short_side_448.py'

dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes'
split_size = 500
test_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        ann_file='',  # no split file: every image of leftImg8bit/val/<city>/
    ))

protocol = dict(
    vocabulary='cityscapes',
    prob_thd=0.0,
    test_cfg=dict(crop_size=(224, 224), stride=(80, 80)),  # mode='slide' inherited
)
