_base_ = [
    './proxyclip_vit-l14_mae-b16_coco_object.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=4.5))
