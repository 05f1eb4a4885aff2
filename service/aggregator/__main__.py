"""``python -m service.aggregator [replay]``: the same as ``rlhb aggregator [replay]``."""

from service.aggregator.cli import aggregator_app

aggregator_app(prog_name="rlhb aggregator")
