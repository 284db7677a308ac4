"""The benchmark command (``tools/analysis/benchmark.py``, ``python -m fsa_seg.analysis``) as its
user meets it: a user's mistake ends in one line ``error: ...`` before anything is measured (in
the workers too), Ctrl-C in one line with status 130 and the grid's finished runs kept in
--json, progress on stderr and the reports alone on stdout."""
import json
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch

from fsa_seg.analysis import benchmark, cli, e2e_benchmark, kernel_benchmark, text_benchmark

from end_to_end import tiny_proxyclip_112

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason='checks a machine without CUDA')
TINY_PLUGIN = ['--q', '3', '--heads', '2', '--head-dim', '4', '--repeat', '1']


@pytest.fixture(autouse=True)
def forkserver_workers(monkeypatch):
    """The command forks its CPU workers from a process that has run nothing with torch; this
    one may have (other tests), and a fork after torch's OpenMP threads started can hang: the
    workers start from a fresh server process instead, as the library's default does."""
    monkeypatch.setattr(cli, 'worker_start_method', lambda device: 'forkserver')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> str:
    """ProxyCLIP + FSA with a tiny CLIP and VFM, 112-pixel crops, images resized to 112."""
    config = tiny_proxyclip_112(tmp_path_factory.mktemp('cli'))
    return str(config)


def refused(argv, capfd) -> str:
    """The one error line the command ends in; nothing measured (no report), no traceback
    from it or its workers."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    out, err = capfd.readouterr()
    message = str(exit_.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    assert out == '' and 'Traceback' not in err, err
    return message


E2E = ['e2e', '--config', '{tiny}', '--images', '1', '--repeat', '1', '--stage-repeat', '1',
       '--device', 'cpu']


@pytest.mark.parametrize('argv, message', [
    pytest.param(['kernel', '--n', '16'], 'error: --device cuda: no CUDA device on this machine '
                 '(use --device cpu)', marks=NO_CUDA),  # the kernel's default device
    pytest.param(['plugin', '--device', 'cuda', '--n', '16'], 'no CUDA device', marks=NO_CUDA),
    pytest.param(['config', '{tiny}', '--random-weights', '--device', 'cuda'], 'no CUDA device',
                 marks=NO_CUDA),
    pytest.param(['proxyclip', '--device', 'cuda'], 'no CUDA device', marks=NO_CUDA),
    pytest.param(['text', '--device', 'cuda'], 'no CUDA device', marks=NO_CUDA),
    pytest.param(['e2e', '--device', 'cuda:0'], 'error: --device cuda:0: no CUDA device on this '
                 'machine (use --device cpu)', marks=NO_CUDA),
    (['plugin', '--device', 'tpu', '--n', '16'],
     "error: --device tpu: the benchmarks run on 'cpu' or 'cuda[:i]'"),
    (['kernel', '--device', 'meta'], "--device meta: the benchmarks run on 'cpu' or 'cuda[:i]'"),
    (['kernel', '--device', 'cpu', '--n', '4097'],
     'error: --n 4097: the fused kernel takes rows of at most 4096 tokens'),
    (['text', '--vocab', 'nosuch'], "error: vocabulary 'nosuch' is neither a bundled vocabulary"),
    (['text', '--model', 'NoSuchModel'],
     "error: --model NoSuchModel: unknown open_clip model 'NoSuchModel'"),
    (['text', '--templates', 'nosuch'], "error: --templates nosuch: unknown template set"),
    (['config', '{tiny}', '--random-weights', '--cfg-options', 'model.plugin.lamda=abc'],
     "tiny_proxyclip_fsa.py: could not convert string to float: 'abc'"),  # in a worker
    (['config', '{tiny}', '--random-weights', '--cfg-options', 'model.plugin.nosuch=1'],
     "tiny_proxyclip_fsa.py: FSA.__init__() got an unexpected keyword argument 'nosuch'"),
    (['config', '{tiny}', '--random-weights', '--q', '1'],
     'error: --q 1: vocabulary: a vocabulary needs at least two classes'),
    (E2E + ['--random-weights', '--cfg-options', 'model.plugin.lamda=abc'],
     "tiny_proxyclip_fsa.py: could not convert string to float: 'abc'"),
    (E2E + ['--random-weights', '--cfg-options', 'model.plugin.nosuch=1'],
     "tiny_proxyclip_fsa.py: FSA.__init__() got an unexpected keyword argument 'nosuch'"),
])
def test_user_mistakes_end_in_one_line_before_anything_is_measured(argv, message, tiny, capfd):
    line = refused([arg.format(tiny=tiny) for arg in argv], capfd)
    assert message in line, line


def test_a_one_class_vocabulary_file_is_one_line(tmp_path, capfd):
    (tmp_path / 'classes.txt').write_text('cat; kitten\n')
    line = refused(['text', '--vocab', str(tmp_path / 'classes.txt')], capfd)
    assert line.startswith(f'error: {tmp_path / "classes.txt"}: a vocabulary needs at least two '
                           'classes, got 1'), line


@pytest.mark.parametrize('command', [['config', '{tiny}'], E2E])
def test_missing_weights_suggest_random_weights_alike_in_config_and_e2e(command, tiny, capfd):
    """The tiny config names no CLIP weights: 'openai' is looked for as a file; both commands
    say so and how to measure without the weights, in the same words."""
    line = refused([arg.format(tiny=tiny) for arg in command] + ['--repeat', '1'], capfd)
    assert line == ('error: CLIP checkpoint file not found: openai; to measure latency and '
                    'memory without the weights, pass --random-weights (real-size models, random '
                    'weights)')


def test_the_kernel_outside_tritons_interpreter_is_refused_on_cpu(monkeypatch, capfd):
    """Triton compiled the kernels (no TRITON_INTERPRET at import): a plain function stands for
    a compiled kernel, which the kernel module refuses to run on CPU tensors."""
    import fsa_seg.models.plugins._fsa_triton as triton_kernels
    monkeypatch.setattr(triton_kernels, 'prune_and_sharpen_rows', lambda *args: None)
    line = refused(['kernel', '--device', 'cpu', '--n', '16'], capfd)
    assert line == ("error: --device cpu: the fused FSA kernels run on CUDA; on CPU only in "
                    "Triton's interpreter (TRITON_INTERPRET=1 set before Triton is imported)")


# ---------------------------------------------------------------------------- --json
@pytest.mark.parametrize('where, message', [
    ('folder', '{path}: a folder; give a file name'),
    ('file/grid.json', '{path}: {tmp}/file is a file, not a folder'),
    ('file/deeper/grid.json', '{path}: {tmp}/file is a file, not a folder'),
])
def test_an_unusable_json_path_is_refused_before_measuring(where, message, tmp_path, capfd):
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file').write_text('a file')
    path = tmp_path / where
    line = refused(['plugin', '--n', '8', *TINY_PLUGIN, '--json', str(path)], capfd)
    assert line == 'error: --json ' + message.format(path=path, tmp=tmp_path)


def test_json_is_replaced_whole_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / 'out' / 'grid.json'
    benchmark.write_json(str(path), dict(runs=[1]))
    benchmark.write_json(str(path), dict(runs=[1, 2]))
    assert json.loads(path.read_text()) == dict(runs=[1, 2])
    assert os.listdir(path.parent) == ['grid.json']
    (tmp_path / 'file').write_text('a file')
    with pytest.raises(benchmark.BenchmarkError, match=r'cannot write --json .*file/grid.json'):
        benchmark.write_json(str(tmp_path / 'file' / 'grid.json'), {})


# ---------------------------------------------------------------------------- Ctrl-C
def _interrupt_the_parent():
    """A worker's work that Ctrl-C stops: the parent is sent SIGINT, as a terminal sends it to
    the whole process group; the worker waits to be stopped."""
    time.sleep(0.5)  # (the parent is waiting for the result by then)
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(60)


def _interrupted():
    raise KeyboardInterrupt


@pytest.mark.usefixtures('ctrl_c_as_in_a_shell')
@pytest.mark.parametrize('work', [_interrupt_the_parent, _interrupted])
def test_ctrl_c_stops_the_worker_and_reaches_the_parent_without_a_traceback(work, capfd):
    with pytest.raises(KeyboardInterrupt):
        benchmark._in_fresh_process(multiprocessing.get_context('fork'), work)
    assert multiprocessing.active_children() == []
    assert 'Traceback' not in capfd.readouterr().err


@pytest.mark.usefixtures('ctrl_c_as_in_a_shell')
def test_ctrl_c_in_a_grid_keeps_the_finished_runs_in_json(tmp_path, capfd):
    """Ctrl-C once the first size's JSON is written, while the second size runs (N = 1000: its
    workers take a while): its report and JSON are kept, the command ends in one line with
    status 130. Progress went to stderr, the report to stdout."""
    path = tmp_path / 'grid.json'

    def interrupt_once_written():
        while not path.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_written, daemon=True).start()
    with pytest.raises(SystemExit) as exit_:
        cli.main(['plugin', '--n', '8', '1000', '--dtype', 'fp64', *TINY_PLUGIN,
                  '--json', str(path)])
    out, err = capfd.readouterr()
    assert exit_.value.code == 130 and 'Traceback' not in err, err
    assert err.splitlines()[-1] == f'interrupted; {path} holds the 1 of 2 runs finished'
    saved = json.loads(path.read_text())
    assert [run['spec']['params']['n'] for run in saved['runs']] == [8]
    assert out.startswith('FSA plug-in: ours vs the official formulation\nattn (1, 1, 8, 8)')
    assert err.splitlines()[:5] == [
        'run 1/2: N=8, fp64', 'memory 1/3: ours, alone in a fresh process ...',
        'memory 2/3: ours-device, alone in a fresh process ...',
        'memory 3/3: official, alone in a fresh process ...',
        'latency: ours, ours-device, official, interleaved, 1 run each ...']
    assert err.splitlines()[5] == 'run 2/2: N=1000, fp64'
    assert multiprocessing.active_children() == []  # the worker of N = 1000 stopped too


@pytest.mark.parametrize('argv, module, runner', [
    (['text'], text_benchmark, 'run_text'),
    (['e2e', '--device', 'cpu'], e2e_benchmark, 'run_e2e'),
    (['kernel', '--device', 'cpu', '--n', '16'], kernel_benchmark, 'run_kernel_benchmark'),
])
def test_ctrl_c_in_any_command_is_one_line_and_status_130(argv, module, runner, monkeypatch,
                                                          capfd):
    monkeypatch.setattr(module, runner, lambda *args, **kwargs: _interrupted())
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 130
    assert capfd.readouterr().err == 'interrupted\n'
