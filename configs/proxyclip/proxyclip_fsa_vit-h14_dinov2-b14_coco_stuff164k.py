_base_ = [
    './proxyclip_vit-h14_dinov2-b14_coco_stuff164k.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=2.3))
