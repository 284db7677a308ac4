_base_ = [
    '../_base_/models/resclip.py',
    '../_base_/backbones/vit-b16.py',
    '../_base_/resclip/context59.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, **_base_.protocol)
