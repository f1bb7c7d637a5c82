"""Benchmarks that print numbers: the scan, CLIP guidance, I/O, the pipeline, real time; and their click group.

Each module measures one thing and is run by ``cliphaze bench ...`` (``commands``) or a script in
``scripts/``. They live above ``stream/`` and ``cliphaze/`` so they may time both.
"""
