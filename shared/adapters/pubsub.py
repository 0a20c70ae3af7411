"""Bus on Google Cloud Pub/Sub (google-cloud-pubsub).

``publish`` blocks until Pub/Sub has acknowledged the message (the publish future
resolved with a message id): from then on it cannot be lost, which is what the
Bus port promises. A stage's own message is acknowledged only after that, so a
crash in between means a redelivery, not a loss.

Stage topic names ("planned", "deliver", ...) map to ``projects/P/topics/{prefix}{name}``.
Each message carries the attributes ``axiom-topic`` (the stage topic name, so a
dead-lettered message still says where it came from) and ``axiom-type``.

Only the GCP runtime imports this module. ``PUBSUB_EMULATOR_HOST`` is honoured by
the client itself.
"""

from __future__ import annotations

import os

from google.cloud import pubsub_v1

from shared.messages import Message

TOPIC_ATTRIBUTE = "axiom-topic"
TYPE_ATTRIBUTE = "axiom-type"


class PubSubBus:
    def __init__(self, project: str | None = None, *, prefix: str = "", publisher: "pubsub_v1.PublisherClient | None" = None,
                 timeout_s: float = 60.0):
        self.project = project or os.environ["GOOGLE_CLOUD_PROJECT"]
        self.prefix = prefix
        self.publisher = publisher or pubsub_v1.PublisherClient()
        self.timeout_s = timeout_s

    def topic_path(self, topic: str) -> str:
        return self.publisher.topic_path(self.project, f"{self.prefix}{topic}")

    def publish(self, topic: str, message: Message | bytes) -> str:
        """Publish and wait for the server's acknowledgement; returns the message id."""
        body = message if isinstance(message, bytes) else message.to_bytes()
        attributes = {TOPIC_ATTRIBUTE: topic}
        if not isinstance(message, bytes):
            attributes[TYPE_ATTRIBUTE] = type(message).__name__
        future = self.publisher.publish(self.topic_path(topic), body, **attributes)
        return future.result(timeout=self.timeout_s)
