"""rlhb: online continual alignment of LLMs from user behavior.

This package holds the command line (``rlhb``), the embedded infrastructure (broker,
Redis), model preparation, the settings classes and the simulated users / demo. The
data-flow packages are the siblings ``schemas``, ``service`` and ``trainer``.
"""

__version__ = "0.1.0"
