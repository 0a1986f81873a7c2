"""Operator tools: the runner behind `make serve` (serve.py, runtime.py), the Triton image's
entrypoint, real-server launchers for tests and benchmarks (processes.py), model builders,
the soak run and the container test."""
