# PASCAL VOC 2012 val with background (21 classes). Layout: see data/README.md.
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
split_size = 1449  # images in the official split; tools/test.py reports a mismatch

# Resize the image before loading annotations: ground truth stays at its original size.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 336), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline,
    ),
)
test_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])

# The protocol's model settings for this benchmark; leaf configs merge them into `model`
# (mmengine forbids the same key, such as `model`, in two sibling base files).
protocol = dict(
    vocabulary='voc21',
    prob_thd=0.2,
    test_cfg=dict(mode='slide', crop_size=(336, 336), stride=(112, 112)),
)
