"""Test-session settings shared by tests/ and the chapters that nbval runs.

The test command is plain `pytest`; quick mode is switched on here so chapters use the bundled sample and tiny
schedules. Tests use one intra-op thread: their tensors are small, and on a shared two-core machine several
threads per process spin against each other and run many times slower.
"""

import os

os.environ.setdefault("SMELIB_QUICK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
