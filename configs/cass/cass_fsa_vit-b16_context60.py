_base_ = [
    './cass_vit-b16_context60.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
