"""The shared core: what every process (API, aggregator, trainer) may import.

It imports no process and nothing above it; see docs/architecture.md ("Floors").
"""
