_base_ = [
    './proxyclip_vit-l14_dino-b8_ade20k.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
