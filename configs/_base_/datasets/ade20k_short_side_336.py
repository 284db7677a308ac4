# Not a benchmark of its own: ADE20K with images resized to short side 336 (ours: 448), as the
# SCLIP family's official codes (CASS, ResCLIP, SC-CLIP) evaluate it.
_base_ = './ade20k.py'

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 336), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
