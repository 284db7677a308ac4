_base_ = [
    '../_base_/models/proxyclip.py',
    '../_base_/backbones/vit-h14.py',
    '../_base_/proxies/mae-b16.py',
    '../_base_/datasets/coco_object.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, vfm=_base_.vfm, **_base_.protocol)
