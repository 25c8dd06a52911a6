"""Tools beside the core: the product commands of the CLI, benchmarks, inference optimisation, ONNX export,
FLOP counting in the paper's convention, releases, and model inspection.

They import the core (``smelib.models``, ``smelib.data``, ``smelib.training``, ...), never the study; the core never
imports them (``lint-imports`` checks both).
"""
