# FSA plug-in; λ (lamda) comes from the backbone's or the proxy's base config.
fsa = dict(type='FSA', top_p=0.45, logit_scales=(20.0, 35.0))
