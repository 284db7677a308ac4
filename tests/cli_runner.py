"""Run fsa-seg's commands in subprocesses, cheaply: each command runs in a fresh process forked
from a server process that imported fsa_seg (and torch, mmseg) once and ran nothing.

A run behaves as ``fsa-seg ARGS`` / ``python tools/test.py ARGS`` would in a shell: its own
process, working folder, environment, stdout and stderr (captured to files) and exit status; an
exception that escapes prints its traceback and exits 1, as the interpreter does.
"""
import multiprocessing
import os
import runpy
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
ENTRIES = {'fsa-seg': None, 'tools/test.py': REPO / 'tools' / 'test.py',
           'tools/predict.py': REPO / 'tools' / 'predict.py'}
_CONTEXT = multiprocessing.get_context('forkserver')
_CONTEXT.set_forkserver_preload(['fsa_seg.apis', 'fsa_seg.cli', 'cli_runner'])


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _child(entry: str, argv: Sequence[str], cwd: str, env: Dict[str, str], out: str, err: str,
           file_size_limit: Optional[int]) -> None:
    """The forked process: redirect, run the entry point, exit with its status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a shell
    os.chdir(cwd)
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    if file_size_limit is not None:  # a full disk: writes past the limit fail (EFBIG)
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    status = 0
    try:
        sys.argv = [entry, *argv]
        if ENTRIES[entry] is None:
            from fsa_seg.cli import main
            status = main(list(argv))
        else:
            runpy.run_path(str(ENTRIES[entry]), run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
        status = 1 if isinstance(code, str) else (code or 0)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def start(entry: str, argv: Sequence[str], cwd: Path, env: Optional[dict] = None,
          file_size_limit: Optional[int] = None):
    """Start a run; returns (process, stdout path, stderr path)."""
    assert entry in ENTRIES, entry
    out, err = Path(cwd) / '.stdout.txt', Path(cwd) / '.stderr.txt'
    process = _CONTEXT.Process(target=_child, args=(
        entry, [str(a) for a in argv], str(cwd), dict(env or {}), str(out), str(err),
        file_size_limit))
    process.start()
    return process, out, err


def finish(process, out: Path, err: Path, timeout: float = 600) -> Result:
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f'the command ran longer than {timeout} s')
    return Result(process.exitcode, out.read_text(errors='replace'),
                  err.read_text(errors='replace'))


def run(entry: str, argv: Sequence[str], cwd: Path, env: Optional[dict] = None,
        file_size_limit: Optional[int] = None, timeout: float = 600) -> Result:
    """Run ``entry ARGV`` in a fresh process and wait for it."""
    return finish(*start(entry, argv, cwd, env, file_size_limit), timeout=timeout)
