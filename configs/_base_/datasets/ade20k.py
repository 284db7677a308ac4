# ADE20K (ADEChallengeData2016) validation, 150 classes; label 0 ("other") is ignored.
_base_ = './_short_side_448.py'

dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
split_size = 2000
test_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        ann_file='',  # no split file: every image of images/validation
    ))

protocol = dict(vocabulary='ade20k', prob_thd=0.0)
