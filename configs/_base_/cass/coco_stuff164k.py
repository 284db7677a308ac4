# CASS's protocol on COCO-Stuff164k (its configs/cfg_coco_stuff164k.py) where it differs from ours.
_base_ = ['../datasets/coco_stuff164k.py']

protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.2, mean_vector_weight=0.02, h_threshold=0.02,
    scale_singular_values=True, whole_image_global=True,
)
