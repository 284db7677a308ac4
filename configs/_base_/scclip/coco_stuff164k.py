# SC-CLIP's protocol on COCO-Stuff164k (its configs/cfg_coco_stuff164k.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/coco_stuff164k.py']

protocol = dict(
    logit_scale=40.0, prob_thd=0.0,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
