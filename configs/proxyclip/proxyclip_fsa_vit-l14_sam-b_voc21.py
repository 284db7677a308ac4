_base_ = [
    './proxyclip_vit-l14_sam-b_voc21.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
