_base_ = [
    '../_base_/models/vanilla_clip.py',
    '../_base_/backbones/vit-h14.py',
    '../_base_/datasets/context60.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, **_base_.protocol)
