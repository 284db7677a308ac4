_base_ = [
    './naclip_vit-h14_coco_stuff164k.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=2.3))
