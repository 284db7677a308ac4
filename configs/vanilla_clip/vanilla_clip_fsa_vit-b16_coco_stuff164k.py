_base_ = [
    './vanilla_clip_vit-b16_coco_stuff164k.py',
    '../_base_/plugins/fsa.py',
]
model = dict(plugin=dict(_base_.fsa, lamda=3.0))
