"""The summary that ends ``tools/analysis/gpu_session.sh``: what each step's results JSON in the
session's folder measured, in short.

    python -m fsa_seg.analysis.session RESULTS_FOLDER ["STEP STEP ..."]

Only the steps asked for (the session's ``STEPS``; none given: all) are summarised, and those
without a JSON (failed, stopped, skipped) are named as such.
"""
import json
import os
import sys
from typing import Iterable, List, Optional

from . import benchmark, e2e_benchmark, kernel_benchmark

SEGMENTOR_STEPS = ('proxyclip_fp32', 'proxyclip_fp16', 'proxyclip_graphs', 'cass')


class Session:
    """The results folder of a session and the steps it was asked for (None: all)."""

    def __init__(self, results: str, steps: Optional[Iterable[str]] = None):
        self.results = results
        self.steps = None if steps is None else set(steps)
        self.lines: List[str] = []

    def load(self, name: str) -> Optional[dict]:
        """Step ``name``'s results, or None: not asked for (nothing said), or asked for and
        without results (said)."""
        if self.steps is not None and name not in self.steps:
            return None
        path = os.path.join(self.results, f'{name}.json')
        if not os.path.isfile(path):
            self.lines.append(f'{name}: no result (its output is in steps.log)\n')
            return None
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)


def summary(results: str, steps: Optional[Iterable[str]] = None) -> str:
    session = Session(results, steps)
    session.lines.append('\n================================ summary '
                         '================================')
    _plugin(session, session.load('plugin'))
    _segmentors(session)
    kernel = session.load('kernel')
    if kernel:
        session.lines.append('\n' + kernel_benchmark.kernel_report(kernel))
    for name in ('e2e', 'e2e_graphs'):
        e2e = session.load(name)
        if e2e:
            session.lines.append(f'\n[{name}]\n' + e2e_benchmark.e2e_report(e2e))
    return '\n'.join(session.lines)


def _plugin(session: Session, plugin: Optional[dict]) -> None:
    if not plugin:
        return
    lines = session.lines
    runs = plugin.get('runs', [plugin])
    env = runs[0]['results']['ours']['env']
    lines.append(f"device: {env['device']} ({env.get('device_name', 'cpu')}), "
                 f"torch {env['torch']}")
    lines.append(benchmark.plugin_grid_report(runs))
    for run in runs:
        params = run['spec']['params']
        syncs = {v: run['results'][v].get('host_syncs') for v in run['variants']
                 if v.startswith('ours')}
        if any(syncs.values()):
            lines.append(f"host synchronisations, N={params['n']} {params['dtype']}: "
                         + '; '.join(f'{v}: {found}' for v, found in syncs.items()))
    # where an eager run's host time goes: in full for the first run, the totals for the rest
    for index, run in enumerate(runs):
        host = benchmark.host_profile_lines(run, 'ours')[1:]
        if host:
            params = run['spec']['params']
            lines.append(f"N={params['n']} {params['dtype']}: "
                         + '\n'.join(host[:None if index == 0 else 1]))
    lines.append('')


def _segmentors(session: Session) -> None:
    profiled = []
    for name in SEGMENTOR_STEPS:
        comparison = session.load(name)
        if comparison:
            session.lines.append(benchmark.segmentor_line(comparison))
            profile = benchmark.profile_lines(comparison)
            profiled += [f'\n[{name}]', *profile[1:]] if profile else []
    session.lines.append('\n'.join(profiled))


def main(argv: Optional[List[str]] = None) -> None:
    """``RESULTS_FOLDER ["STEP STEP ..."]``: the session's STEPS, empty or absent for all."""
    results, *steps = sys.argv[1:] if argv is None else argv
    asked = ' '.join(steps).split()
    print(summary(results, asked or None))


if __name__ == '__main__':
    main()
