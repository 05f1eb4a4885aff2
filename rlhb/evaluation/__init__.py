"""Measures the trainer does not optimize: answer quality (``quality``), like rates with
confidence intervals and significance tests (``stats``), and the pure text features both
the measures and the simulated users share (``text``)."""
