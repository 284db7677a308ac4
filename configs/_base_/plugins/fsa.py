# FSA plug-in; its λ (lamda) per backbone and proxy is in fsa_seg/experiments.py, written into
# each FSA leaf by tools/misc/generate_configs.py.
fsa = dict(type='FSA', top_p=0.45, logit_scales=(20.0, 35.0))
