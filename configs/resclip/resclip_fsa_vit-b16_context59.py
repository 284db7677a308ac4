_base_ = [
    './resclip_vit-b16_context59.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
