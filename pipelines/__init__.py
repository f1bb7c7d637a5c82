"""Decode -> upload -> guidance -> restore -> download -> encode engine.

``pipelines.runner.run(source, sink, dehazer, config)`` is the entry point; importing this package
is light (no torch until a run starts).
"""
