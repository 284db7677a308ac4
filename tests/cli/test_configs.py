"""``fsa-seg configs`` and ``fsa-seg config``."""
import contextlib
import io

from mmengine.config import Config

from fsa_seg import cli
from fsa_seg.apis.configs import resolve_config


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(map(str, argv)))
    return status, out.getvalue(), err.getvalue()


def test_configs_lists_names_matching_a_pattern():
    status, out, _ = run_cli('configs', 'naclip_fsa_vit-l14_c*')
    assert status == 0
    assert out.split() == ['naclip_fsa_vit-l14_cityscapes', 'naclip_fsa_vit-l14_coco_object',
                           'naclip_fsa_vit-l14_coco_stuff164k', 'naclip_fsa_vit-l14_context59',
                           'naclip_fsa_vit-l14_context60']
    status, out, err = run_cli('configs', 'nothing_like_this')
    assert status == 1 and out == '' and "no config name matches 'nothing_like_this'" in err


def test_config_dump_writes_a_loadable_config(tmp_path):
    target = tmp_path / 'sub' / 'mine.py'
    status, out, _ = run_cli('config', 'sclip_fsa_vit-l14_ade20k', '--dump', target,
                             '--cfg-options', 'model.prob_thd=0.5')
    assert status == 0 and str(target) in out
    dumped = Config.fromfile(str(target))
    original = Config.fromfile(str(resolve_config('sclip_fsa_vit-l14_ade20k')))
    assert dumped.model == dict(original.model, prob_thd=0.5)
    status, printed, _ = run_cli('config', 'sclip_fsa_vit-l14_ade20k')
    assert status == 0 and "type='SCLIP'" in printed


def test_config_errors_are_one_line(tmp_path):
    status, _, err = run_cli('config', 'sclip_fsa_vit-l14_ade2ok')
    assert status == 1 and err.count('\n') == 1 and 'Did you mean: sclip_fsa_vit-l14_ade20k' in err
    status, _, err = run_cli('config', 'sclip_fsa_vit-l14_ade20k', '--dump', tmp_path / 'x.txt')
    assert status == 1 and 'must end in .py' in err


def test_config_dump_under_a_file_names_the_file_in_the_way(tmp_path):
    (tmp_path / 'afile').write_text('not a folder')
    for target in (tmp_path / 'afile' / 'x.py', tmp_path / 'afile' / 'sub' / 'x.py'):
        status, out, err = run_cli('config', 'sclip_fsa_vit-l14_ade20k', '--dump', target)
        assert (status, out) == (1, '')
        assert err == (f'fsa-seg config: error: --dump {target}: {tmp_path / "afile"} is a file, '
                       'not a folder\n')
    assert (tmp_path / 'afile').read_text() == 'not a folder'
