"""Signed impression ids: issued by the API, checked by the API and the aggregator.

The signer lives in core (core.impression_ids) so that the aggregator checks events written
straight to Kafka with the same code and keys; this name stays for the API's imports."""

from __future__ import annotations

from core.impression_ids import IdFacts, IdProblem, ImpressionIds, parse_old_secrets

ImpressionSigner = ImpressionIds

__all__ = ["IdFacts", "IdProblem", "ImpressionIds", "ImpressionSigner", "parse_old_secrets"]
