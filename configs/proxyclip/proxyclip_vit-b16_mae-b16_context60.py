_base_ = [
    '../_base_/models/proxyclip.py',
    '../_base_/backbones/vit-b16.py',
    '../_base_/proxies/mae-b16.py',
    '../_base_/datasets/context60.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, vfm=_base_.vfm, **_base_.protocol)
