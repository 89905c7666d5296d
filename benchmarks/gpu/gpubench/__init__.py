"""The GPU benchmark's parts, one concern each (`run_gpu_bench.py` beside this is the CLI).

- `configs`: what to run: configurations (whole, mpsK, variants), the plan, time estimates;
- `machine`: facts about the machine and its processes (GPU name, versions, /proc), logging,
  the re-run under the staged venv, the deadline;
- `mps`: the CUDA MPS control daemon (the stand-in for MIG: NOT MIG);
- `measure`: one configuration end to end (stack, our engine's sweep, perf_analyzer);
- `report`: the summary, charts and merging results brought back from several device calls.

Every module imports only the standard library at import time: the CLI re-executes itself
under the staged venv before anything else is imported.
"""
