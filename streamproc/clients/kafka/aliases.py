"""The package's own names for the aiokafka classes its callers hold, catch and construct.

Stages and tests type against these, never against aiokafka, so aiokafka stays an import of
this package alone (the import-linter contracts in pyproject.toml). They are aliases, not
wrappers: a ``Consumer`` is an ``aiokafka.AIOKafkaConsumer``, a ``KafkaError`` is
``aiokafka.errors.KafkaError`` (the base of every error the clients raise), so nothing
changes at run time.
"""

from __future__ import annotations

from typing import TypeAlias

import aiokafka
import aiokafka.errors

#: a group consumer, as :func:`.connecting.consumer` builds it
Consumer: TypeAlias = aiokafka.AIOKafkaConsumer
#: a producer, as :func:`.connecting.producer` builds it
Producer: TypeAlias = aiokafka.AIOKafkaProducer
#: a record as a consumer hands it out (``topic``, ``partition``, ``offset``, ``key``, ``value``...)
Record: TypeAlias = aiokafka.ConsumerRecord
#: a topic's partition, the key of a fetch's batches and of committed offsets
Partition: TypeAlias = aiokafka.TopicPartition
#: the base of every error the Kafka clients raise
KafkaError: TypeAlias = aiokafka.errors.KafkaError
