# CASS's protocol on COCO-Object (its configs/cfg_coco_object.py) where it differs from ours.
_base_ = ['../datasets/coco_object.py']

protocol = dict(
    vocabulary='cass_coco_object',  # its 113 names for 81 classes
    prob_thd=0.1, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.25, mean_vector_weight=0.01, h_threshold=0.10,
    scale_singular_values=True, whole_image_global=True,
)
