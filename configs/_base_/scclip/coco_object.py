# SC-CLIP's protocol on COCO-Object (its configs/cfg_coco_object.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/coco_object.py']

protocol = dict(
    vocabulary='cass_coco_object',  # the SCLIP family's 113 names, 81 classes
    logit_scale=55.0, prob_thd=0.35,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
