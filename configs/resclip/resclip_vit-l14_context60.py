_base_ = [
    '../_base_/models/resclip.py',
    '../_base_/backbones/vit-l14.py',
    '../_base_/resclip/context60.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, **_base_.protocol)
