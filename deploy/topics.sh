#!/usr/bin/env sh
# Create the topics on a real Kafka cluster (the embedded broker creates its own).
# Usage: BOOTSTRAP=kafka:9092 PARTITIONS=8 deploy/topics.sh
set -eu
for t in impressions feedback behavior-records dead-letter; do
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "${BOOTSTRAP:-kafka:9092}" --create --if-not-exists \
    --topic "$t" --partitions "${PARTITIONS:-8}" --replication-factor "${REPLICATION:-1}"
done
