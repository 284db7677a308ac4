# CASS's protocol on Cityscapes (its configs/cfg_city_scapes.py) where it differs from ours.
_base_ = ['../datasets/cityscapes_short_side_560.py']  # short side 560
protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.14,
    scale_singular_values=False, whole_image_global=False,  # the global prior from each crop
)
