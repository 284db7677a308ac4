# Not a benchmark of its own: Cityscapes with images resized to short side 560 (ours: 448), as
# the SCLIP family's official codes (CASS, ResCLIP, SC-CLIP) evaluate it.
_base_ = './cityscapes.py'

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 560), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
