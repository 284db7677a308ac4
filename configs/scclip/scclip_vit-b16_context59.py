_base_ = [
    '../_base_/models/scclip.py',
    '../_base_/backbones/vit-b16.py',
    '../_base_/scclip/vit-b16.py',
    '../_base_/scclip/context59.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, **_base_.scclip_settings, **_base_.protocol)
