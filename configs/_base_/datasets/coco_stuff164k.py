# COCO-Stuff164k val2017 (171 classes, 255 unlabeled). mmseg layout: see data/README.md.
_base_ = './voc21.py'

dataset_type = 'COCOStuffDataset'
data_root = 'data/coco_stuff164k'
split_size = 5000
test_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'),
        ann_file='',  # no split file: every image of images/val2017
    ))

protocol = dict(vocabulary='coco_stuff164k', prob_thd=0.0)
