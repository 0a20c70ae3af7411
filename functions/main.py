"""Cloud Functions entry points: ``match``, ``morph``, ``route``, ``dead_letter``;
``stow`` (HTTP, STOW-RS), ``poll`` (Cloud Scheduler -> Pub/Sub ``{"source_id": ...}``)
and ``ghc_ingest`` (Healthcare API DICOM store notifications).

Each is a CloudEvent function fed by a Pub/Sub push (``google.cloud.pubsub.topic.v1.
messagePublished``). It only decodes the Pub/Sub message into the message model,
gets the process's ports and calls the stage in :mod:`shared.stages`; the stage
publishes its result. Returning acknowledges the message; raising makes
functions-framework answer 500, so Pub/Sub redelivers (with the subscription's retry
policy) and, after the subscription's max delivery attempts, forwards it to the
dead-letter topic, whose function turns it into an exception record.

    ${prefix}ingest   (GCS OBJECT_FINALIZE notifications) -> match
    ${prefix}planned  -> morph
    ${prefix}deliver  -> route
    ${prefix}dead-letter -> dead_letter

Environment: see :mod:`shared.runtime.gcp`; AXIOM_LOG_LEVEL (INFO) and
AXIOM_PYNETDICOM_LOG_LEVEL (WARNING) set the logging levels.
"""

from __future__ import annotations

import base64
import json
import logging
import os

import functions_framework

from shared import stages
from shared.inputs.healthcare_notify import ingest_healthcare_notification
from shared.inputs.pollers import poll_by_id
from shared.inputs.stow.http import stow_http_function
from shared.messages import DeadLetter, Delivery, ObjectFinalized, Plan
from shared.runtime import gcp

logging.basicConfig(level=os.environ.get("AXIOM_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
# pynetdicom's INFO is a line per association and request
logging.getLogger("pynetdicom").setLevel(os.environ.get("AXIOM_PYNETDICOM_LOG_LEVEL", "WARNING"))
log = logging.getLogger("axiom.functions")

GCS_FINALIZE = "OBJECT_FINALIZE"
# Attributes Pub/Sub adds to a message it forwards to a dead-letter topic.
DLQ_DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
DLQ_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
TOPIC_ATTRIBUTE = "axiom-topic"  # set by shared.adapters.pubsub.PubSubBus


def _pubsub_message(cloud_event) -> tuple[dict, bytes, dict]:
    """(message, decoded data, attributes) of a messagePublished CloudEvent."""
    data = cloud_event.data or {}
    message = data.get("message") or {}
    raw = message.get("data") or ""
    body = base64.b64decode(raw) if raw else b""
    return message, body, dict(message.get("attributes") or {})


def _delivery_attempt(cloud_event, message: dict) -> int:
    """Pub/Sub's deliveryAttempt (present only on subscriptions with a dead-letter
    policy), from the event or, when functions-framework converted a raw push
    request, from that request's body. 1 when unknown."""
    data = cloud_event.data or {}
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


@functions_framework.cloud_event
def match(cloud_event) -> None:
    """GCS notification of the ingest bucket (or a republished ObjectFinalized) -> match."""
    message, body, attributes = _pubsub_message(cloud_event)
    event_type = attributes.get("eventType")
    if event_type is not None:
        if event_type != GCS_FINALIZE:
            log.info("ignoring %s notification for gs://%s/%s", event_type, attributes.get("bucketId"),
                     attributes.get("objectId"))
            return
        event = ObjectFinalized.from_gcs_notification(attributes, json.loads(body))
    else:  # an exception record retried: the message model itself
        event = ObjectFinalized.from_bytes(body)
    stages.match(gcp.ports(), event)


@functions_framework.cloud_event
def morph(cloud_event) -> None:
    _, body, _ = _pubsub_message(cloud_event)
    stages.morph(gcp.ports(), Plan.from_bytes(body))


@functions_framework.cloud_event
def route(cloud_event) -> None:
    message, body, _ = _pubsub_message(cloud_event)
    delivery = Delivery.from_bytes(body)
    result = stages.route(gcp.ports(), delivery, _delivery_attempt(cloud_event, message))
    log.info("route %s -> %s: %s", delivery.sop_instance_uid, delivery.destination_id, result)


@functions_framework.cloud_event
def dead_letter(cloud_event) -> None:
    """A DeadLetter message, or a message Pub/Sub forwarded from a stage subscription
    after its max delivery attempts (original data and attributes, plus the
    CloudPubSubDeadLetterSource* attributes)."""
    _, body, attributes = _pubsub_message(cloud_event)
    forwarded = "eventType" in attributes or (
        TOPIC_ATTRIBUTE in attributes and attributes[TOPIC_ATTRIBUTE] != gcp.TOPIC_DEAD_LETTER)
    if forwarded:
        letter = _forwarded_letter(body, attributes)
    else:
        try:
            letter = DeadLetter.from_bytes(body)
        except ValueError:
            letter = _forwarded_letter(body, attributes)
    stages.dead_letter(gcp.ports(), letter)


def _forwarded_letter(body: bytes, attributes: dict) -> DeadLetter:
    attempts = int(attributes.get(DLQ_DELIVERY_COUNT) or 0)
    subscription = attributes.get(DLQ_SUBSCRIPTION, "")
    if "eventType" in attributes:  # a GCS notification: keep it as the model match accepts
        topic = gcp.TOPIC_INGEST
        try:
            body = ObjectFinalized.from_gcs_notification(attributes, json.loads(body)).to_bytes()
        except (ValueError, KeyError):
            pass  # keep the notification as it came
    else:
        topic = attributes.get(TOPIC_ATTRIBUTE) or subscription or "unknown"
    where = f" of subscription {subscription}" if subscription else ""
    return DeadLetter(topic=topic, body=body.decode("utf-8", errors="replace"), attempts=attempts,
                      last_error=f"Pub/Sub dead-letter policy{where}: the stage failed on every delivery")


@functions_framework.http
def stow(request):
    """STOW-RS: POST .../studies[/{StudyInstanceUID}]."""
    return stow_http_function(request, gcp.ports())


@functions_framework.cloud_event
def poll(cloud_event) -> None:
    """One poll of a source; Cloud Scheduler publishes ``{"source_id": "..."}``."""
    _, body, _ = _pubsub_message(cloud_event)
    result = poll_by_id(gcp.ports(), json.loads(body)["source_id"])
    log.info("poll %s: %s", result.source_id, result.to_dict())


@functions_framework.cloud_event
def release_held(cloud_event) -> None:
    """Cloud Scheduler (any message): send the deliveries held for destinations that
    are enabled again."""
    released = stages.release_held(gcp.ports())
    log.info("release_held: %d released", len(released))


@functions_framework.cloud_event
def ghc_ingest(cloud_event) -> None:
    """A Healthcare API DICOM store notification (data: the instance resource name)."""
    _, body, attributes = _pubsub_message(cloud_event)
    ingest_healthcare_notification(gcp.ports(), body, attributes)
