"""``fsa-seg predict`` arguments (fsa_seg/cli/predict.py)."""
import pytest

from fsa_seg.apis import inference
from fsa_seg.cli import predict


class Stop(Exception):
    """Raised in place of building a model, once its arguments are seen."""


@pytest.mark.parametrize('flags, expected', [([], 'auto'), (['--cuda-graphs'], True),
                                             (['--no-cuda-graphs'], False)])
def test_cuda_graphs_flags_reach_the_model(monkeypatch, tmp_path, flags, expected):
    """No flag: graphs where they pay off unless the config decides ('auto'); either flag
    decides."""
    seen = {}

    def init_segmentor(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(inference, 'init_segmentor', init_segmentor)
    args = predict.build_parser('fsa-seg predict').parse_args(
        ['--device', 'cpu', '--out-dir', str(tmp_path / 'out'), *flags])
    with pytest.raises(Stop):
        predict.run_predict(args)
    assert seen['cuda_graphs'] == expected
