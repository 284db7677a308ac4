"""Analysis tools (benchmarks). Submodules import torch and the models lazily: ``tools/analysis``
scripts stay light, and the heavy imports happen once, in the benchmark worker processes."""
