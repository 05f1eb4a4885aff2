"""Contracts shared by every process: pydantic models only, no I/O, no torch.

Importing this package must stay cheap (milliseconds): the API, the aggregator and
the trainer all read and write these shapes, and a Kafka client in any language can
produce them as JSON.
"""

from schemas.adapters import ABTrial, AdapterStatus, AdapterVersion
from schemas.api import (
    FEEDBACK_BATCH_LIMIT,
    FeedbackAccepted,
    FeedbackBatch,
    QueryRequest,
    QueryResponse,
)
from schemas.behavior import BehaviorRecord
from schemas.feedback import FeedbackEvent, FeedbackKind
from schemas.impression import Impression

__all__ = [
    "ABTrial",
    "AdapterStatus",
    "AdapterVersion",
    "BehaviorRecord",
    "FEEDBACK_BATCH_LIMIT",
    "FeedbackAccepted",
    "FeedbackBatch",
    "FeedbackEvent",
    "FeedbackKind",
    "Impression",
    "QueryRequest",
    "QueryResponse",
]
