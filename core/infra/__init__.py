"""Embedded infrastructure for one machine: a Kafka-protocol broker and a Redis server,
started as subprocesses on free loopback ports when nothing is configured."""
