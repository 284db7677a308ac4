"""``fsa-seg test`` / ``tools/test.py`` arguments (fsa_seg/cli/testing.py)."""
import pytest

from fsa_seg import apis
from fsa_seg.cli import testing


@pytest.mark.parametrize('flags, expected', [([], 'auto'), (['--cuda-graphs'], True),
                                             (['--no-cuda-graphs'], False)])
def test_cuda_graphs_flags_reach_the_config_set_up(monkeypatch, flags, expected):
    """No flag leaves the choice to the config and the machine ('auto'); either flag decides."""
    seen = {}
    monkeypatch.setattr(apis, 'load_test_config',
                        lambda *args, **kwargs: seen.update(kwargs) or 'cfg')
    monkeypatch.setattr(apis, 'evaluate', lambda cfg, **kwargs: seen.update(evaluated=cfg))
    args = testing.build_parser('tools/test.py').parse_args(['some_config', *flags])
    assert testing.run_test(args) == 0
    assert seen['cuda_graphs'] == expected and seen['evaluated'] == 'cfg'
