_base_ = [
    './proxyclip_vit-b16_mae-b16_cityscapes.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=_base_.proxy_fsa_lamda))
