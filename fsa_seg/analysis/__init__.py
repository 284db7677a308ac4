"""Benchmarks: variants measured side by side in one run, reported as measurements and ratios.

:mod:`.benchmark` (the plug-in against the official formulation; a config's crop with and
without its plug-in), :mod:`.text_benchmark` (first use of a vocabulary), :mod:`.e2e_benchmark`
(``tools/test.py``'s path end to end) and their command line, :mod:`.cli`
(``python -m fsa_seg.analysis``, or ``tools/analysis/benchmark.py`` in a checkout);
:mod:`.session` sums up ``tools/analysis/gpu_session.sh``. Nothing is imported here: importing
:mod:`fsa_seg` does not load the benchmarks."""
