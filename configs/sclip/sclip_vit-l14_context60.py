_base_ = [
    '../_base_/models/sclip.py',
    '../_base_/backbones/vit-l14.py',
    '../_base_/datasets/context60.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, **_base_.protocol)
