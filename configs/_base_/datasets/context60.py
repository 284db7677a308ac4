# PASCAL Context val, 59 classes + background (60). mmseg layout: see data/README.md.
_base_ = './voc21.py'

dataset_type = 'PascalContextDataset'
data_root = 'data/VOCdevkit/VOC2010'
split_size = 5105
test_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
        ann_file='ImageSets/SegmentationContext/val.txt',
    ))

protocol = dict(vocabulary='context60', prob_thd=0.14)
