"""The aggregator: feedback + impressions (Kafka) -> deduped counts (Redis) -> behavior records.

encoding (pure: buckets, rates, sentences), fold (pure: decode, plan, records),
redis_state (atomic Lua scripts), consumer (the committing shell), export, cli.
"""
