"""The crop benchmarks (``config``, ``proxyclip``): configs by name, the config's own plug-in,
ratios computed from the measurements, no verdicts."""
import re

import pytest

from fsa_seg.analysis import benchmark, cli

WITHOUT, WITH = benchmark.SegmentorWorkload.variants


def comparison(medians, plugin_s, extra_mb, resident_mb):
    """A finished ``config`` comparison with made-up numbers (without, with the plug-in)."""
    results = {}
    for variant, median, extra in zip((WITHOUT, WITH), medians, extra_mb):
        results[variant] = dict(
            median_s=median, min_s=median, extra_peak_bytes=extra * benchmark.MB,
            inputs_bytes=resident_mb * benchmark.MB, method='test', reliable=True, q=171,
            plugin_repr='FSA(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))',
            model_bytes=resident_mb * benchmark.MB,
            model_parts=dict(clip_image=100 * benchmark.MB, vfm=50 * benchmark.MB),
            env=dict(torch='x', threads=2, device='cpu'))
    results[WITH].update(plugin_median_s=plugin_s)
    params = dict(config='/configs/proxyclip_fsa.py', random_weights=True, crop=336, q=171,
                  batch=1, precision=None, device='cpu', cfg_options=None)
    return dict(spec=dict(kind='segmentor', params=params), repeat=3,
                variants=[WITHOUT, WITH], results=results)


def test_report_gives_the_plugin_share_and_the_ratios_of_the_measurements():
    # 2.00 s without, 2.10 s with (0.10 s in the plug-in); extra peak 100 → 110 MB over 890 MB
    report = benchmark.segmentor_report(comparison((2.0, 2.1), 0.1, (100, 110), 890), 'title')
    assert 'time inside the plug-in: 0.1000 s per crop (median), 4.8% of the crop' in report
    assert 'with / without the plug-in: latency 1.05x (+5.0%) (medians; 1.05x (+5.0%) on the ' \
           'minima)' in report
    # peak incl. model and crop: (890 + 110) / (890 + 100) = 1.0101
    assert 'peak memory incl. model and crop 1.01x (+1.0%)' in report
    assert 'extra peak alone 1.10x (+10.0%) (+10.0 MB)' in report
    assert re.search(rf'^{WITH}\s+2\.1000\s+2\.1000\s+110\.0\s+1000\.0$', report, re.M), report
    assert not re.search(r'target|MET|MISSED', report), report


def test_one_line_summary_for_the_gpu_session():
    line = benchmark.segmentor_line(comparison((0.0183, 0.0295), 0.0105, (100, 110), 890))
    assert line == ('proxyclip_fsa, its precision, 1 x 336^2 crop, Q=171, cpu: 18.3 ms without '
                    'the plug-in, 29.5 ms with (1.61x (+61.2%)); inside the plug-in 10.5 ms '
                    '(35.6% of the crop); peak memory 1.01x (+1.0%)')


def test_a_config_without_plugin_is_refused_before_any_worker_starts():
    with pytest.raises(benchmark.BenchmarkError, match='proxyclip_vit-b16_dino-b8_voc21 has no '
                                                       'plug-in'):
        benchmark.run_segmentor('proxyclip_vit-b16_dino-b8_voc21', random_weights=True)


@pytest.mark.parametrize('argv, message', [
    (['config', 'proxyclip_vit-b16_dino-b8_voc21'], 'has no plug-in to compare'),
    (['config', 'proxyclip_fsa_no_such_config'], 'is neither a file nor the name of a config'),
    (['plugin', '--config', 'clearclip_fsa_vit-b16_voc21'], 'not a ProxyCLIP config'),
])
def test_cli_user_mistakes_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert str(exit_info.value).startswith('error: ') and message in str(exit_info.value)
    assert capsys.readouterr().out == ''
