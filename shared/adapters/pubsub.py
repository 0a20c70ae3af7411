"""The Bus port on Google Cloud Pub/Sub (google-cloud-pubsub), and the other half of
the wire: what a Cloud Function receives from a Pub/Sub push, decoded into our messages.

Publishing: ``publish`` blocks until Pub/Sub has acknowledged the message (the publish
future resolved with a message id): from then on it cannot be lost, which is what the
Bus port promises. A stage's own message is acknowledged only after that, so a crash in
between means a redelivery, not a loss. Stage topic names (shared.messages.TOPICS) map
to ``projects/P/topics/{prefix}{name}``. Each message carries the attributes
``axiom-topic`` (the stage topic name, so a dead-lettered message still says where it
came from) and ``axiom-type``.

Receiving: a push arrives as a CloudEvent ``google.cloud.pubsub.topic.v1.messagePublished``
whose data is ``{"message": {"data": base64, "attributes": {...}, ...}, "subscription":
..., "deliveryAttempt": N}``. :class:`Push` decodes it; :func:`object_finalized` reads a
GCS notification; :func:`dead_letter` rebuilds what Pub/Sub forwarded to a dead-letter
topic. The client library is imported only by :class:`PubSubBus`.
``PUBSUB_EMULATOR_HOST`` is honoured by the client itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.messages import TOPIC_DEAD_LETTER, TOPIC_INGEST, BlobRef, DeadLetter, Message, ObjectFinalized

log = logging.getLogger(__name__)

TOPIC_ATTRIBUTE = "axiom-topic"
TYPE_ATTRIBUTE = "axiom-type"
# Attributes Pub/Sub adds to a message it forwards to a dead-letter topic.
DLQ_DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
DLQ_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
GCS_FINALIZE = "OBJECT_FINALIZE"

M = TypeVar("M", bound=Message)


class PubSubBus:
    def __init__(self, project: str | None = None, *, prefix: str = "", publisher: Any = None,
                 timeout_s: float = 60.0):
        from google.cloud import pubsub_v1  # only the GCP runtime publishes here

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


@dataclass(frozen=True)
class Push:
    """One pushed Pub/Sub message: its decoded data, its attributes, and Pub/Sub's
    delivery attempt (1 when the subscription has no dead-letter policy)."""

    body: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    attempt: int = 1

    @classmethod
    def from_cloud_event(cls, cloud_event) -> "Push":
        data = cloud_event.data or {}
        message = data.get("message") or {}
        raw = message.get("data") or ""
        return cls(body=base64.b64decode(raw) if raw else b"",
                   attributes=dict(message.get("attributes") or {}),
                   attempt=_delivery_attempt(data, message))

    def message(self, model: type[M]) -> M:
        return model.from_bytes(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


def _delivery_attempt(data: dict, message: dict) -> int:
    """Pub/Sub's deliveryAttempt (present only on subscriptions with a dead-letter
    policy), from the event or, when functions-framework converted a raw push
    request, from that request's body."""
    value = data.get("deliveryAttempt") or message.get("deliveryAttempt")
    if value is None:
        try:
            import flask

            if flask.has_request_context():
                value = (flask.request.get_json(silent=True) or {}).get("deliveryAttempt")
        except Exception:  # only a hint; never fail a delivery over it
            value = None
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def object_finalized(push: Push) -> ObjectFinalized | None:
    """The ingest bucket's OBJECT_FINALIZE notification (JSON_API_V1 payload), or an
    ObjectFinalized republished from an exception record; None for another GCS event
    (a delete, a metadata update), which match ignores."""
    event_type = push.attributes.get("eventType")
    if event_type is None:  # an exception record retried: the message model itself
        return push.message(ObjectFinalized)
    if event_type != GCS_FINALIZE:
        log.info("ignoring %s notification for gs://%s/%s", event_type, push.attributes.get("bucketId"),
                 push.attributes.get("objectId"))
        return None
    return _from_gcs_notification(push.attributes, json.loads(push.body))


def _from_gcs_notification(attributes: dict[str, str], data: dict[str, Any]) -> ObjectFinalized:
    return ObjectFinalized(
        blob=BlobRef(
            bucket=attributes.get("bucketId") or data["bucket"],
            name=attributes.get("objectId") or data["name"],
            generation=str(attributes.get("objectGeneration") or data.get("generation") or "") or None,
        ),
        metadata=data.get("metadata") or {},
    )


def dead_letter(push: Push) -> DeadLetter:
    """A DeadLetter message, or a message Pub/Sub forwarded from a stage subscription
    after its max delivery attempts (original data and attributes, plus the
    CloudPubSubDeadLetterSource* attributes)."""
    forwarded = "eventType" in push.attributes or (
        TOPIC_ATTRIBUTE in push.attributes and push.attributes[TOPIC_ATTRIBUTE] != TOPIC_DEAD_LETTER)
    if not forwarded:
        try:
            return push.message(DeadLetter)
        except ValueError:
            pass
    attempts = int(push.attributes.get(DLQ_DELIVERY_COUNT) or 0)
    subscription = push.attributes.get(DLQ_SUBSCRIPTION, "")
    body = push.body
    if "eventType" in push.attributes:  # a GCS notification: keep it as the model match accepts
        topic = TOPIC_INGEST
        try:
            body = _from_gcs_notification(push.attributes, json.loads(body)).to_bytes()
        except (ValueError, KeyError):
            pass  # keep the notification as it came
    else:
        topic = push.attributes.get(TOPIC_ATTRIBUTE) or subscription or "unknown"
    where = f" of subscription {subscription}" if subscription else ""
    return DeadLetter(topic=topic, body=body.decode("utf-8", errors="replace"), attempts=attempts,
                      last_error=f"Pub/Sub dead-letter policy{where}: the stage failed on every delivery")
