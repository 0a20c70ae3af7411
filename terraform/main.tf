# Axiom Flow on GCP: buckets, the Pub/Sub stage chain, one Cloud Run function per entry
# point of functions/main.py and functions/api.py, the spanner's Cloud Run job,
# Firestore, secrets, schedules, the SCP gateway and the optional Healthcare API store. Monitoring is in monitoring.tf. Names follow the code:
# shared/runtime/gcp.py (topics, environment) and shared/messages.py (TOPICS).

data "google_project" "project" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  healthcare_enabled = var.healthcare.enabled
  gateway_enabled    = var.gateway.enabled

  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "healthcare.googleapis.com",
    "aiplatform.googleapis.com", # Vertex AI Gemini for ai_standardize (the crosswalk function)
    "sqladmin.googleapis.com",   # Cloud SQL crosswalk sources (the connector asks it for the instance)
  ]

  # the buckets: settings.ingest_bucket, processed_bucket, quarantine_bucket of the config
  bucket_names = {
    for kind in ["ingest", "processed", "quarantine"] :
    kind => coalesce(var.buckets[kind].name, "${var.name_prefix}${var.project_id}-${kind}")
  }
  bucket_retention_days = {
    ingest     = var.retention.received_days
    processed  = var.retention.processed_days
    quarantine = var.retention.quarantine_days
  }

  # Topics. The stage topics are the code's (shared/messages.py TOPICS, named
  # ${AXIOM_TOPIC_PREFIX}<name>); the others are this module's: the scheduler ticks,
  # the Healthcare store's notifications, and where the dead-letter path's own failures
  # are kept (retained 31 days on the topic, to be replayed by a subscription seeking it).
  stage_topics = ["ingest", "crosswalk", "planned", "deliver", "dead-letter"]
  extra_topics = concat(["poll", "release-held", "crosswalk-sync", "dead-letter-unrecorded"], local.healthcare_enabled ? ["healthcare"] : [])
  topics       = { for t in concat(local.stage_topics, local.extra_topics) : t => "${var.topic_prefix}${t}" }
  kept_topics  = ["dead-letter", "dead-letter-unrecorded"]

  # Subscription -> (topic, function, dead-letter topic, retention). Every subscription
  # has a dead-letter policy: the stages' go to dead-letter (dead_letter turns them into
  # exception records); dead-letter's own and the scheduler ticks' (a missed tick is
  # replaced by the next; not an instance, so no exception record) to dead-letter-unrecorded.
  subscriptions = merge({
    ingest         = { topic = "ingest", function = "match", dead_letter = "dead-letter", retention_s = var.pubsub.message_retention_s }
    crosswalk      = { topic = "crosswalk", function = "crosswalk", dead_letter = "dead-letter", retention_s = var.pubsub.message_retention_s }
    planned        = { topic = "planned", function = "morph", dead_letter = "dead-letter", retention_s = var.pubsub.message_retention_s }
    deliver        = { topic = "deliver", function = "route", dead_letter = "dead-letter", retention_s = var.pubsub.message_retention_s }
    dead-letter    = { topic = "dead-letter", function = "dead_letter", dead_letter = "dead-letter-unrecorded", retention_s = var.pubsub.message_retention_s }
    poll           = { topic = "poll", function = "poll", dead_letter = "dead-letter-unrecorded", retention_s = 600 }
    release-held   = { topic = "release-held", function = "release_held", dead_letter = "dead-letter-unrecorded", retention_s = 600 }
    crosswalk-sync = { topic = "crosswalk-sync", function = "crosswalk_sync", dead_letter = "dead-letter-unrecorded", retention_s = 600 }
    }, {
    for k, v in {
      healthcare = { topic = "healthcare", function = "ghc_ingest", dead_letter = "dead-letter", retention_s = var.pubsub.message_retention_s }
    } : k => v if local.healthcare_enabled
  })

  # Every entry point of functions/main.py and functions/api.py (source: its file).
  # push: fed by a Pub/Sub push subscription; http: called from outside (api, stow).
  # per_request_n: multiples of max_instance_bytes one request holds in memory (its
  # /tmp), see var.max_instance_bytes.
  entry_points = {
    match          = { source = "main.py", trigger = "push", per_request_n = 1, fixed_mib = null, concurrency = 1, max_instances = 20, timeout_s = 540 }
    crosswalk      = { source = "main.py", trigger = "push", per_request_n = 1, fixed_mib = null, concurrency = 1, max_instances = 20, timeout_s = 540 }
    crosswalk_sync = { source = "main.py", trigger = "push", per_request_n = 0, fixed_mib = 1024, concurrency = 1, max_instances = 1, timeout_s = 3600 }
    morph          = { source = "main.py", trigger = "push", per_request_n = 2, fixed_mib = null, concurrency = 1, max_instances = 20, timeout_s = 540 }
    route          = { source = "main.py", trigger = "push", per_request_n = 1, fixed_mib = null, concurrency = 1, max_instances = 20, timeout_s = 540 }
    dead_letter    = { source = "main.py", trigger = "push", per_request_n = 0, fixed_mib = 512, concurrency = 10, max_instances = 5, timeout_s = 120 }
    release_held   = { source = "main.py", trigger = "push", per_request_n = 0, fixed_mib = 512, concurrency = 1, max_instances = 1, timeout_s = 540 }
    poll           = { source = "main.py", trigger = "push", per_request_n = 1, fixed_mib = null, concurrency = 1, max_instances = 10, timeout_s = 540 }
    ghc_ingest     = { source = "main.py", trigger = "push", per_request_n = 1, fixed_mib = null, concurrency = 1, max_instances = 10, timeout_s = 540 }
    stow           = { source = "main.py", trigger = "http", per_request_n = 2, fixed_mib = null, concurrency = 1, max_instances = 10, timeout_s = 600 }
    api            = { source = "api.py", trigger = "http", per_request_n = 0, fixed_mib = 512, concurrency = 20, max_instances = 5, timeout_s = 300 }
    spanner        = { source = "api.py", trigger = "http", per_request_n = 0, fixed_mib = 512, concurrency = 20, max_instances = 10, timeout_s = 300 }
  }
  deployed_entry_points = { for e, spec in local.entry_points : e => spec if e != "ghc_ingest" || local.healthcare_enabled }

  # Cloud Run's memory sizes (MiB) and the CPUs each needs
  memory_sizes_mib = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
  n_mib            = ceil(var.max_instance_bytes / 1048576)
  needed_mib = {
    for e, spec in local.entry_points : e => (
      spec.fixed_mib != null ? spec.fixed_mib : coalesce(try(var.functions[e].concurrency, null), spec.concurrency) * spec.per_request_n * local.n_mib + 256
    )
  }
  memory_mib = { for e, need in local.needed_mib : e => [for s in local.memory_sizes_mib : s if s >= need][0] }
  resources = {
    for e, spec in local.entry_points : e => {
      memory        = coalesce(try(var.functions[e].memory, null), local.memory_mib[e] >= 1024 ? "${local.memory_mib[e] / 1024}Gi" : "${local.memory_mib[e]}Mi")
      cpu           = coalesce(try(var.functions[e].cpu, null), local.memory_mib[e] > 24576 ? "8" : local.memory_mib[e] > 16384 ? "6" : local.memory_mib[e] > 8192 ? "4" : local.memory_mib[e] > 4096 ? "2" : "1")
      timeout_s     = coalesce(try(var.functions[e].timeout_s, null), spec.timeout_s)
      concurrency   = coalesce(try(var.functions[e].concurrency, null), spec.concurrency)
      min_instances = coalesce(try(var.functions[e].min_instances, null), 0)
      max_instances = coalesce(try(var.functions[e].max_instances, null), spec.max_instances)
    }
  }

  function_source_object = {
    for e in keys(local.entry_points) : e => coalesce(lookup(var.function_source.objects, e, null), var.function_source.object, "functions/${e}.zip")
  }

  # The environment shared/runtime/gcp.py and the entry modules (functions/) read
  function_environment = {
    GOOGLE_CLOUD_PROJECT       = var.project_id
    AXIOM_TOPIC_PREFIX         = var.topic_prefix
    AXIOM_FIRESTORE_DATABASE   = var.firestore.database
    AXIOM_COLLECTION_PREFIX    = var.firestore.collection_prefix
    AXIOM_CONFIG_TTL_S         = tostring(var.config_ttl_s)
    AXIOM_TMP_DIR              = "/tmp"
    AXIOM_LOG_LEVEL            = var.log_level
    AXIOM_PYNETDICOM_LOG_LEVEL = "WARNING"
    AXIOM_LOG_FORMAT           = "json"
  }
  api_environment = { AXIOM_API_AUDIENCE = var.api.audience }
  # the spanner function starts the job's executions (shared/spanner/job.py CloudRunJobs)
  spanner_environment = { AXIOM_SPANNER_JOB = module.spanner_query.id }
  function_environments = {
    api     = merge(local.function_environment, local.api_environment)
    spanner = merge(local.function_environment, local.api_environment, local.spanner_environment)
  }

  gateway_environment = {
    GOOGLE_CLOUD_PROJECT       = var.project_id
    AXIOM_FIRESTORE_DATABASE   = var.firestore.database
    AXIOM_COLLECTION_PREFIX    = var.firestore.collection_prefix
    AXIOM_INGEST_BUCKET        = local.bucket_names["ingest"]
    AXIOM_HEALTHCHECK_PORT     = tostring(var.gateway.port) # the container's C-ECHO check
    AXIOM_SPOOL_DIR            = "/spool"
    AXIOM_MIN_FREE_BYTES       = tostring(var.gateway.min_free_bytes)
    AXIOM_LOG_LEVEL            = var.log_level
    AXIOM_PYNETDICOM_LOG_LEVEL = "WARNING"
    AXIOM_LOG_FORMAT           = "json"
  }

  # IAM: each function's, the spanner job's and the gateway's service account, [role,
  # on]. "on" is project, bucket:<kind>, topic:<stage topic>, secrets (each of
  # var.secrets.ids), dicom_store (the Healthcare store, when enabled) or job:spanner
  # (the spanner's Cloud Run job). This is the table of
  # docs/gcp-iam.md, which says why (tests/infra checks the two are the same).
  service_account_roles = {
    match = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:quarantine"],
      ["roles/pubsub.publisher", "topic:crosswalk"],
      ["roles/pubsub.publisher", "topic:planned"],
    ]
    crosswalk = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:quarantine"],
      ["roles/pubsub.publisher", "topic:planned"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/cloudsql.client", "project"],
      ["roles/aiplatform.user", "project"],
    ]
    crosswalk_sync = [
      ["roles/datastore.user", "project"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/cloudsql.client", "project"],
    ]
    morph = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:processed"],
      ["roles/storage.objectUser", "bucket:quarantine"],
      ["roles/pubsub.publisher", "topic:crosswalk"],
      ["roles/pubsub.publisher", "topic:deliver"],
    ]
    route = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:processed"],
      ["roles/secretmanager.secretAccessor", "secrets"],
    ]
    dead_letter = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:processed"],
    ]
    release_held = [
      ["roles/datastore.user", "project"],
      ["roles/pubsub.publisher", "topic:ingest"],
      ["roles/pubsub.publisher", "topic:deliver"],
    ]
    poll = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectCreator", "bucket:ingest"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/healthcare.dicomViewer", "dicom_store"],
    ]
    ghc_ingest = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectCreator", "bucket:ingest"],
      ["roles/healthcare.dicomViewer", "dicom_store"],
    ]
    stow = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectCreator", "bucket:ingest"],
    ]
    api = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectUser", "bucket:ingest"],
      ["roles/storage.objectUser", "bucket:processed"],
      ["roles/storage.objectUser", "bucket:quarantine"],
      ["roles/pubsub.publisher", "topic:ingest"],
      ["roles/pubsub.publisher", "topic:crosswalk"],
      ["roles/pubsub.publisher", "topic:planned"],
      ["roles/pubsub.publisher", "topic:deliver"],
    ]
    spanner = [
      ["roles/datastore.user", "project"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/healthcare.dicomViewer", "dicom_store"],
      ["roles/run.jobsExecutorWithOverrides", "job:spanner"],
    ]
    spanner_job = [
      ["roles/datastore.user", "project"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/healthcare.dicomViewer", "dicom_store"],
    ]
    gateway = [
      ["roles/datastore.user", "project"],
      ["roles/storage.objectCreator", "bucket:ingest"],
      ["roles/secretmanager.secretAccessor", "secrets"],
      ["roles/logging.logWriter", "project"],
      ["roles/monitoring.metricWriter", "project"],
      ["roles/artifactregistry.reader", "project"],
    ]
  }

  secret_ids = var.secrets.ids
  secret_resource_ids = {
    for name, id in local.secret_ids : name => (var.secrets.create ? google_secret_manager_secret.secret[name].secret_id : id)
  }
  iam_resources = merge(
    { project = "" },
    { for kind, name in local.bucket_names : "bucket:${kind}" => google_storage_bucket.bucket[kind].name },
    { for t, name in local.topics : "topic:${t}" => google_pubsub_topic.topic[t].name },
    { for k, id in { dicom_store = one(google_healthcare_dicom_store.store[*].id) } : k => id if id != null },
    { "job:spanner" = module.spanner_query.name },
  )
  role_bindings = {
    for sa, rows in local.service_account_roles : sa => merge(
      {
        for row in rows : "${row[0]}@${row[1]}" => {
          scope    = split(":", row[1])[0]
          resource = local.iam_resources[row[1]]
          role     = row[0]
        } if row[1] != "secrets" && (row[1] != "dicom_store" || local.healthcare_enabled)
      },
      {
        for pair in setproduct([for row in rows : row[0] if row[1] == "secrets"], keys(local.secret_ids)) :
        "${pair[0]}@secret:${pair[1]}" => { scope = "secret", resource = local.secret_resource_ids[pair[1]], role = pair[0] }
      },
    )
  }

  pubsub_agent = "serviceAccount:service-${data.google_project.project.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_project_service" "api" {
  for_each           = var.enable_apis ? toset(local.apis) : toset([])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# --- Buckets ---------------------------------------------------------------------

resource "google_storage_bucket" "bucket" {
  #checkov:skip=CKV_GCP_62:access logs of these buckets go to Cloud Audit Logs (Data Access) instead of a log bucket
  for_each                    = local.bucket_names
  project                     = var.project_id
  name                        = each.value
  location                    = coalesce(var.buckets[each.key].location, var.region)
  force_destroy               = var.buckets[each.key].force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  # Versioning where an overwrite or delete could lose data: every bucket. Ingest: a
  # quarantine deletes the received object (after copying it); processed: a re-run of
  # morph writes the same name; quarantine: a redelivered quarantine copies again. A
  # replaced or deleted version is kept retention.noncurrent_days.
  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  # Age only: GCS cannot know whether an object's deliveries are settled, so the age
  # must be well beyond the retry horizon (see var.retention).
  dynamic "lifecycle_rule" {
    for_each = local.bucket_retention_days[each.key] == null ? [] : [local.bucket_retention_days[each.key]]
    content {
      condition {
        age        = lifecycle_rule.value
        with_state = "LIVE"
      }
      action {
        type = "Delete"
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.retention.noncurrent_days == null ? [] : [var.retention.noncurrent_days]
    content {
      condition {
        days_since_noncurrent_time = lifecycle_rule.value
        with_state                 = "ARCHIVED"
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.api]
}

# The ingest bucket's OBJECT_FINALIZE notifications start match (topic <prefix>ingest)
resource "google_pubsub_topic_iam_member" "gcs_publishes_ingest" {
  project = var.project_id
  topic   = google_pubsub_topic.topic["ingest"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "ingest" {
  bucket         = google_storage_bucket.bucket["ingest"].name
  topic          = google_pubsub_topic.topic["ingest"].id
  payload_format = "JSON_API_V1"
  event_types    = ["OBJECT_FINALIZE"]
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes_ingest]
}

# --- Pub/Sub ---------------------------------------------------------------------

resource "google_pubsub_topic" "topic" {
  for_each     = local.topics
  project      = var.project_id
  name         = each.value
  labels       = var.labels
  kms_key_name = var.kms_key_name
  # dead letters stay replayable for 31 days even once their subscription acked them
  message_retention_duration = contains(local.kept_topics, each.key) ? "2678400s" : null
  depends_on                 = [google_project_service.api]
}

# Pub/Sub pushes with this identity's OIDC token; it may invoke the push-fed functions only
resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.name_prefix}push"
  display_name = "Axiom Flow Pub/Sub push"
}

resource "google_pubsub_subscription" "push" {
  for_each                   = local.subscriptions
  project                    = var.project_id
  name                       = "${var.topic_prefix}${each.key}-${replace(each.value.function, "_", "-")}"
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  labels                     = var.labels
  ack_deadline_seconds       = var.pubsub.ack_deadline_s
  message_retention_duration = "${each.value.retention_s}s"

  expiration_policy {
    ttl = "" # never expires, however quiet the topic
  }

  retry_policy {
    minimum_backoff = "${var.pubsub.minimum_backoff_s}s"
    maximum_backoff = "${var.pubsub.maximum_backoff_s}s"
  }

  dead_letter_policy {
    dead_letter_topic = google_pubsub_topic.topic[each.value.dead_letter].id
    # the crosswalk stage waits out a database outage: Pub/Sub's most attempts, up to
    # maximum_backoff_s apart (about 16 hours at the defaults)
    max_delivery_attempts = each.key == "crosswalk" ? 100 : var.pubsub.max_delivery_attempts
  }

  # wrapped ({"message", "subscription"}): functions-framework turns it into the
  # CloudEvent the entry point takes
  push_config {
    push_endpoint = module.function[each.value.function].uri
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = module.function[each.value.function].uri
    }
  }
}

# The Pub/Sub service agent forwards to the dead-letter topics and acks the source
resource "google_pubsub_topic_iam_member" "agent_publishes_dead_letters" {
  for_each = toset(local.kept_topics)
  project  = var.project_id
  topic    = google_pubsub_topic.topic[each.value].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_subscribes" {
  for_each     = local.subscriptions
  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# --- Functions -------------------------------------------------------------------

module "function" {
  source   = "./modules/function"
  for_each = local.deployed_entry_points

  project_id         = var.project_id
  region             = var.region
  name               = "${var.name_prefix}${replace(each.key, "_", "-")}"
  entry_point        = each.key
  source_file        = each.value.source
  runtime            = var.function_runtime
  source_bucket      = var.function_source.bucket
  source_object      = local.function_source_object[each.key]
  service_account_id = "${var.name_prefix}fn-${replace(each.key, "_", "-")}"
  environment        = lookup(local.function_environments, each.key, local.function_environment)
  resources          = local.resources[each.key]
  ingress            = each.value.trigger == "http" ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
  public             = (each.key == "api" && var.api.public) || (each.key == "stow" && var.stow.public) || (each.key == "spanner" && var.spanner.public)
  invokers           = each.value.trigger == "push" ? ["serviceAccount:${google_service_account.push.email}"] : []
  kms_key_name       = var.kms_key_name
  vpc_connector      = contains(["crosswalk", "crosswalk_sync"], each.key) ? var.crosswalk.vpc_connector : each.key == "spanner" ? var.spanner.vpc_connector : null
  roles              = local.role_bindings[each.key]
  labels             = var.labels

  depends_on = [google_project_service.api]
}

# --- The spanner's async queries ----------------------------------------------------

# One execution per async query, one task per source of the spanner (the spanner
# function sets the task count and AXIOM_SPANNER_QUERY_ID); the gateway image holds the
# lock's packages and shared/ (docs/architecture.md, "GCP: the spanner").
module "spanner_query" {
  source = "./modules/job"

  project_id         = var.project_id
  region             = var.region
  name               = "${var.name_prefix}spanner-query"
  service_account_id = "${var.name_prefix}spanner-job"
  image              = coalesce(var.spanner.job.image, var.gateway_image, var.gateway.image)
  command            = ["python", "-m", "shared.cli", "spanner", "run-task"]
  environment        = local.function_environment
  task_timeout_s     = var.spanner.job.task_timeout_s
  cpu                = var.spanner.job.cpu
  memory             = var.spanner.job.memory
  vpc_connector      = var.spanner.vpc_connector
  kms_key_name       = var.kms_key_name
  roles              = local.role_bindings["spanner_job"]
  labels             = var.labels

  depends_on = [google_project_service.api]
}

# --- Schedules -------------------------------------------------------------------

resource "google_cloud_scheduler_job" "poll" {
  for_each  = var.pollers
  project   = var.project_id
  region    = var.region
  name      = "${var.name_prefix}poll-${each.key}"
  schedule  = each.value
  time_zone = var.scheduler_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.topic["poll"].id
    data       = base64encode(jsonencode({ source_id = each.key }))
  }
}

resource "google_cloud_scheduler_job" "release_held" {
  project   = var.project_id
  region    = var.region
  name      = "${var.name_prefix}release-held"
  schedule  = var.release_held_schedule
  time_zone = var.scheduler_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.topic["release-held"].id
    data       = base64encode("{}")
  }
}

resource "google_cloud_scheduler_job" "crosswalk_sync" {
  project   = var.project_id
  region    = var.region
  name      = "${var.name_prefix}crosswalk-sync"
  schedule  = var.crosswalk.sync_schedule
  time_zone = var.scheduler_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.topic["crosswalk-sync"].id
    data       = base64encode("{}")
  }
}

# --- Firestore -------------------------------------------------------------------

resource "google_firestore_database" "database" {
  count                             = var.firestore.create ? 1 : 0
  project                           = var.project_id
  name                              = var.firestore.database
  location_id                       = coalesce(var.firestore.location, var.region)
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "OPTIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.firestore.delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  depends_on                        = [google_project_service.api]
}

locals {
  firestore_indexes = jsondecode(file(coalesce(var.firestore_indexes_file, "${path.module}/firestore_indexes.json")))
}

resource "google_firestore_index" "index" {
  for_each = {
    for index in local.firestore_indexes :
    "${index.collection}:${join(",", [for f in index.fields : "${f.field_path}:${f.order}"])}" => index
  }
  project    = var.project_id
  database   = var.firestore.create ? google_firestore_database.database[0].name : var.firestore.database
  collection = "${var.firestore.collection_prefix}${each.value.collection}"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.field_path
      order      = fields.value.order
    }
  }
}

# --- Secrets ---------------------------------------------------------------------

resource "google_secret_manager_secret" "secret" {
  for_each  = var.secrets.create ? local.secret_ids : {}
  project   = var.project_id
  secret_id = each.value
  labels    = var.labels

  replication {
    auto {
      dynamic "customer_managed_encryption" {
        for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
        content {
          kms_key_name = customer_managed_encryption.value
        }
      }
    }
  }

  depends_on = [google_project_service.api]
}

# --- SCP gateway -----------------------------------------------------------------

module "gateway" {
  source = "./modules/gateway"
  count  = local.gateway_enabled ? 1 : 0

  project_id            = var.project_id
  region                = var.region
  name                  = "${var.name_prefix}gateway"
  service_account_id    = "${var.name_prefix}gateway"
  roles                 = local.role_bindings["gateway"]
  image                 = coalesce(var.gateway_image, var.gateway.image)
  environment           = local.gateway_environment
  dicom_port            = var.gateway.port
  network               = var.gateway.network
  subnetwork            = var.gateway.subnetwork
  machine_type          = var.gateway.machine_type
  instance_count        = var.gateway.instance_count
  boot_disk_gb          = var.gateway.boot_disk_gb
  kms_key_self_link     = var.kms_key_name
  load_balancer         = var.gateway.load_balancer
  allowed_source_ranges = var.gateway.allowed_source_ranges
  labels                = var.labels

  depends_on = [google_project_service.api]
}

# --- Healthcare API (optional) ---------------------------------------------------

resource "google_healthcare_dataset" "dataset" {
  count    = local.healthcare_enabled ? 1 : 0
  project  = var.project_id
  name     = var.healthcare.dataset
  location = coalesce(var.healthcare.location, var.region)

  depends_on = [google_project_service.api]
}

resource "google_pubsub_topic_iam_member" "healthcare_publishes" {
  count   = local.healthcare_enabled ? 1 : 0
  project = var.project_id
  topic   = google_pubsub_topic.topic["healthcare"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:service-${data.google_project.project.number}@gcp-sa-healthcare.iam.gserviceaccount.com"
}

# every stored instance publishes its resource name to <prefix>healthcare -> ghc_ingest
resource "google_healthcare_dicom_store" "store" {
  count   = local.healthcare_enabled ? 1 : 0
  name    = var.healthcare.dicom_store
  dataset = google_healthcare_dataset.dataset[0].id
  labels  = var.labels

  notification_config {
    pubsub_topic = google_pubsub_topic.topic["healthcare"].id
  }

  depends_on = [google_pubsub_topic_iam_member.healthcare_publishes]
}
