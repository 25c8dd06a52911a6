"""Everything that exists for this book's study of the SME-DeepLabV3+ paper, apart from the library.

The run plan (:mod:`~smelib.study.plan`), the results table (:mod:`~smelib.study.results`), the paper's conclusions
and constants (:mod:`~smelib.study.conclusions`, :mod:`~smelib.study.table2`, :mod:`~smelib.study.status`),
bootstrap and paired-seed comparisons, decision records, the recipe headroom, the qualitative comparison, the
chapters' figures and the star-operation toy theory. The study imports the core and the tools; nothing outside
``smelib.study`` (and the ``smelib`` entry point) imports it (``lint-imports`` checks this).
"""
