"""Cloud Functions entry points: ``match``, ``crosswalk``, ``morph``, ``route``, ``dead_letter``,
``release_held`` and ``poll`` (Cloud Scheduler), ``ghc_ingest`` (Healthcare API DICOM
store notifications) and ``stow`` (HTTP, STOW-RS). The config API, ``api``, is served
on ASGI and has its own entry module, functions/api.py (the bundle's ``api.py``).

Each CloudEvent function is fed by a Pub/Sub push (``google.cloud.pubsub.topic.v1.
messagePublished``). It only decodes the push (:mod:`shared.adapters.pubsub`), gets the
process's ports (:mod:`shared.runtime.gcp`) and calls the core; the core publishes its
result. Returning acknowledges the message; raising makes functions-framework answer
500, so Pub/Sub redelivers (with the subscription's retry policy) and, after the
subscription's max delivery attempts, forwards it to the dead-letter topic, whose
function turns it into an exception record.

    ${prefix}ingest   (GCS OBJECT_FINALIZE notifications) -> match
    ${prefix}crosswalk -> crosswalk (plans with crosswalk or ai_standardize actions)
    ${prefix}planned  -> morph
    ${prefix}deliver  -> route
    ${prefix}dead-letter -> dead_letter

Environment: see :mod:`shared.runtime.gcp`; AXIOM_LOG_LEVEL (INFO) and
AXIOM_PYNETDICOM_LOG_LEVEL (WARNING) set the logging levels, AXIOM_LOG_FORMAT the
format (``json``, Cloud Logging's structured entries, unless ``text``). Every line
logged while a function runs carries the trace of the request that called it.

Cold start: importing this module imports functions-framework, Flask and the logging
setup only (not Starlette: that is api.py's); each function imports what it calls (the stages, pydicom, pydantic models,
the inputs) on its first call, and :mod:`shared.runtime.gcp` the Google clients and
FastAPI when it builds them. An instance serves one function, so it imports that
function's modules only (docs/architecture.md, "Cold start"; bench/coldstart.py).
"""

from __future__ import annotations

import functools
import logging

import flask
import functions_framework

from shared import logs
from shared.runtime import gcp

gcp.configure_logging()
log = logging.getLogger("axiom.functions")


def _traced(function):
    """Runs ``function`` with the trace of its request on every line it logs: the
    request's ``traceparent`` or ``X-Cloud-Trace-Context`` header (what Cloud Run
    groups a request's logs by), else the CloudEvent's ``traceparent`` extension."""

    @functools.wraps(function)  # functions-framework finds the entry point by its name
    def run(event_or_request):
        headers = {}
        get = getattr(event_or_request, "get", None)
        if callable(get) and not isinstance(event_or_request, flask.Request):  # a CloudEvent's attributes
            traceparent = get("traceparent")
            if isinstance(traceparent, str):
                headers["traceparent"] = traceparent
        if flask.has_request_context():
            headers.update(flask.request.headers)
        with logs.traced(headers):
            return function(event_or_request)

    return run


@functions_framework.cloud_event
@_traced
def match(cloud_event) -> None:
    """GCS notification of the ingest bucket (or a republished ObjectFinalized) -> match."""
    from shared import stages
    from shared.adapters import pubsub
    from shared.adapters.pubsub import Push

    event = pubsub.object_finalized(Push.from_cloud_event(cloud_event))
    if event is not None:
        stages.match(gcp.ports(), event)


@functions_framework.cloud_event
@_traced
def crosswalk(cloud_event) -> None:
    """A plan whose actions look values up -> the same plan with their answers. The one
    function with access to the crosswalk databases and the model."""
    from shared import stages
    from shared.adapters.pubsub import Push
    from shared.messages import Plan

    stages.crosswalk(gcp.ports(), Push.from_cloud_event(cloud_event).message(Plan))


@functions_framework.cloud_event
@_traced
def crosswalk_sync(cloud_event) -> None:
    """Cloud Scheduler (any message): copy the synced crosswalk maps that are due (their
    ``sync.every_s``) from their databases into Firestore."""
    from shared.crosswalk_sync import run_due_syncs
    from shared.stages import lookup_services

    ports = gcp.ports()
    config = ports.config()
    if not any(spec.synced for spec in config.crosswalks):
        return
    for report in run_due_syncs(ports.docs, lookup_services(config, ports).crosswalk, config):
        log.info("crosswalk sync: %s", report)


@functions_framework.cloud_event
@_traced
def morph(cloud_event) -> None:
    from shared import stages
    from shared.adapters.pubsub import Push
    from shared.messages import Plan

    stages.morph(gcp.ports(), Push.from_cloud_event(cloud_event).message(Plan))


@functions_framework.cloud_event
@_traced
def route(cloud_event) -> None:
    from shared import stages
    from shared.adapters.pubsub import Push
    from shared.messages import Delivery

    push = Push.from_cloud_event(cloud_event)
    delivery = push.message(Delivery)
    result = stages.route(gcp.ports(), delivery, push.attempt)
    log.info("route %s -> %s: %s", delivery.sop_instance_uid, delivery.destination_id, result)


@functions_framework.cloud_event
@_traced
def dead_letter(cloud_event) -> None:
    from shared import stages
    from shared.adapters import pubsub
    from shared.adapters.pubsub import Push

    stages.dead_letter(gcp.ports(), pubsub.dead_letter(Push.from_cloud_event(cloud_event)))


@functions_framework.cloud_event
@_traced
def release_held(cloud_event) -> None:
    """Cloud Scheduler (any message): send the deliveries held for destinations that
    are enabled again."""
    from shared import exceptions

    released = exceptions.release_held(gcp.ports())
    log.info("release_held: %d released", len(released))


@functions_framework.cloud_event
@_traced
def poll(cloud_event) -> None:
    """One poll of a source; Cloud Scheduler publishes ``{"source_id": "..."}``."""
    from shared.adapters.pubsub import Push
    from shared.inputs.pollers import poll_by_id

    result = poll_by_id(gcp.ports(), Push.from_cloud_event(cloud_event).json()["source_id"])
    log.info("poll %s: %s", result.source_id, result.to_dict())


@functions_framework.cloud_event
@_traced
def ghc_ingest(cloud_event) -> None:
    """A Healthcare API DICOM store notification (data: the instance resource name)."""
    from shared.adapters.pubsub import Push
    from shared.inputs.healthcare_notify import ingest_healthcare_notification

    push = Push.from_cloud_event(cloud_event)
    ingest_healthcare_notification(gcp.ports(), push.body, push.attributes)


@functions_framework.http
@_traced
def stow(request):
    """STOW-RS: POST .../studies[/{StudyInstanceUID}]."""
    from shared.inputs.stow.http import stow_http_function

    return stow_http_function(request, gcp.ports())
