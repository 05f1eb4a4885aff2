"""Learned reward models for the baselines that need one (RLHB itself uses its discriminator).

- ``behavior_classifier``: RLHBC's multi-head pointwise classifier (RLHB paper, eq. 1).
- ``pairwise``: RLHF's Bradley-Terry reward model on pairs of records (eq. 12).
- ``encoder``: the (query, answer) encoder both share: bundled MiniLM or the base LM trunk.
- ``split``: train / held-out split by query.

Submodules import torch and transformers; this package file does not.
"""
