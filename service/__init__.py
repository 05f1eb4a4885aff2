"""The online side: the HTTP API (service.api) and the aggregator (service.aggregator)."""
