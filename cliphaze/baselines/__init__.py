"""Classical dehazers behind the :class:`cliphaze.dehazer.Dehazer` protocol: ``dcp`` and ``none``."""
