_base_ = [
    '../_base_/models/proxyclip.py',
    '../_base_/backbones/vit-l14.py',
    '../_base_/proxies/mae-b16.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
]
model = dict(clip=_base_.clip, vfm=dict(_base_.vfm, input_size=_base_.protocol['test_cfg']['crop_size']), **_base_.protocol)
