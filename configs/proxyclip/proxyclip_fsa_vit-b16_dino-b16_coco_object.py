_base_ = [
    './proxyclip_vit-b16_dino-b16_coco_object.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
