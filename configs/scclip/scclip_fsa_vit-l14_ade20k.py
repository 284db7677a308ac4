_base_ = [
    './scclip_vit-l14_ade20k.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
