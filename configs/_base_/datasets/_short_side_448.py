# Not a benchmark: the VOC21 protocol with images resized to short side 448, shared by
# cityscapes.py and ade20k.py (mmengine cannot edit one item of an inherited pipeline).
_base_ = './voc21.py'

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
