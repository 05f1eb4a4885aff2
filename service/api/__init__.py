"""FastAPI app: thin routes over the generation backend, Kafka and Redis."""
