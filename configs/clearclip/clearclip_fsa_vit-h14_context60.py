_base_ = [
    './clearclip_vit-h14_context60.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=2.3))
