_base_ = [
    './proxyclip_vit-b16_dino-b8_voc21.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
