_base_ = [
    './maskclip_vit-h14_coco_object.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=2.3))
