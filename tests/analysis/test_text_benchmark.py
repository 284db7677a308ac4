"""The first-use-of-a-vocabulary benchmark's report (``text``): the ratios of the measured times
and token counts, no verdicts."""
import re

from fsa_seg.analysis import text_benchmark

FULL, CUT = text_benchmark.VARIANTS


def test_report_gives_the_speedup_and_the_tokens_saved():
    result = dict(
        vocabulary='voc21', num_queries=56, num_templates=80, model='ViT-B-16', precision='fp32',
        repeat=3, env=dict(torch='x', threads=2, device='cpu'),
        tokens={FULL: 56 * 80 * 77, CUT: 56 * 80 * 14},
        results={FULL: dict(times_s=[30.0, 28.0, 29.0], median_s=29.0, min_s=28.0),
                 CUT: dict(times_s=[10.0, 10.5, 9.0], median_s=10.0, min_s=9.0)},
        max_abs_difference=2e-6)
    report = text_benchmark.text_report(result)
    assert re.search(rf'^{FULL}\s+29\.00\s+28\.00\s+344960$', report, re.M), report
    assert re.search(rf'^{CUT}\s+10\.00\s+9\.00\s+62720$', report, re.M), report
    # 29 / 10, 28 / 9, 77 / 14
    assert 'speed-up (full context / cut per batch): median 2.90x, min 3.11x; tokens run ' \
           '5.50x fewer' in report
    assert 'max |difference| of the embeddings: 2.00e-06' in report
    assert not re.search(r'target|MET|MISSED', report)
