"""Shared test helpers (plain modules, no fixtures; fixtures live in the conftest.py files).

- ``adapter_factory``: real LoRA adapter folders without training (``write_test_adapter``).
- ``behavior_toy``: toy behavior records with a keyword preference (reward-model and algorithm tests).
- ``toy_task``: the "good" toy task and its tiny Phi model (RLHB learning tests).
- ``param_checks``: which parameters a run moved; PEFT checkpoint checks.
- ``trainer_loop``: a trainer process's environment and a producer of behavior records.
- ``serving``: API settings, a live uvicorn server, registered test versions, a greedy oracle.
- ``e2e``: one deployment as real subprocesses (api, aggregator, trainer) and topic readers.
"""
