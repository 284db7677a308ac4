# SC-CLIP's protocol on Cityscapes (its configs/cfg_city_scapes.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/cityscapes.py']
# Images resized to short side 560 (ours: 448).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 560), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
protocol = dict(
    logit_scale=40.0, prob_thd=0.0,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
