variable "project_id" {
  description = "The project Axiom Flow is deployed into (GOOGLE_CLOUD_PROJECT of every function)."
  type        = string
}

variable "region" {
  description = "Region of the functions, the gateway, Cloud Scheduler and the buckets."
  type        = string
  default     = "europe-west4"
}

variable "name_prefix" {
  description = "Prefix of every resource name (buckets are named <name_prefix><project_id>-<kind> unless buckets.*.name is set)."
  type        = string
  default     = "axiom-"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,11}$", var.name_prefix))
    error_message = "name_prefix: lower-case letters, digits and dashes, at most 12 characters, starting with a letter."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs Axiom Flow uses (google_project_service); false where the project's owner enables them."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels on every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "topic_prefix" {
  description = "AXIOM_TOPIC_PREFIX: prefix of the Pub/Sub topics <prefix>ingest, <prefix>planned, <prefix>deliver, <prefix>dead-letter (shared/runtime/gcp.py)."
  type        = string
  default     = "axiom-"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~+%-]*$", var.topic_prefix))
    error_message = "topic_prefix must start a valid Pub/Sub topic name (a letter, then letters, digits, - . _ ~ + %)."
  }
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the buckets, topics, function artefacts and gateway disks; null: Google-managed keys. The service agents of Storage, Pub/Sub, Compute and Cloud Run need roles/cloudkms.cryptoKeyEncrypterDecrypter on it."
  type        = string
  default     = null
}

variable "buckets" {
  description = <<-EOT
    The ingest, processed and quarantine buckets (settings.ingest_bucket, processed_bucket,
    quarantine_bucket of the config: load the config with these names). name: null for
    <name_prefix><project_id>-<kind>. location: null for var.region. force_destroy: let
    `terraform destroy` delete a bucket that holds objects.
  EOT
  type = object({
    ingest = optional(object({
      name          = optional(string)
      location      = optional(string)
      force_destroy = optional(bool, false)
    }), {})
    processed = optional(object({
      name          = optional(string)
      location      = optional(string)
      force_destroy = optional(bool, false)
    }), {})
    quarantine = optional(object({
      name          = optional(string)
      location      = optional(string)
      force_destroy = optional(bool, false)
    }), {})
  })
  default = {}
}

variable "retention" {
  description = <<-EOT
    Days after which GCS lifecycle rules delete objects. A lifecycle rule knows only an
    object's age, not whether its deliveries are settled (the embedded runtime checks
    that; GCS cannot): keep received_days and processed_days well beyond the retry
    horizon (the destinations' retries, the Pub/Sub retention of message_retention_s,
    and the time an operator takes to retry or release an exception record), or a
    held or failed instance loses its object. null: never delete.
    noncurrent_days: how long an overwritten or deleted version is kept where the
    bucket is versioned.
  EOT
  type = object({
    received_days   = optional(number, 30)
    processed_days  = optional(number, 30)
    quarantine_days = optional(number, 90)
    noncurrent_days = optional(number, 7)
  })
  default = {}

  validation {
    condition = alltrue([
      for d in [var.retention.received_days, var.retention.processed_days, var.retention.quarantine_days] : d == null ? true : d >= 7
    ])
    error_message = "Retention under 7 days is shorter than the Pub/Sub retention and an operator's weekend: use 7 days or more (or null: keep)."
  }
}

variable "pubsub" {
  description = <<-EOT
    The stage subscriptions (ingest -> match, planned -> morph, deliver -> route,
    dead-letter -> dead_letter, and the scheduler and Healthcare subscriptions).
    max_delivery_attempts: deliveries before Pub/Sub forwards a message to the
    dead-letter topic (5-100); at least destination_retry_attempts. minimum/maximum
    backoff of the retry policy (Pub/Sub push ignores a stage's own RetryLater delay).
    ack_deadline_s: at least the functions' timeout. message_retention_s: how long an
    unacknowledged message is kept (at most 7 days).
  EOT
  type = object({
    max_delivery_attempts = optional(number, 10)
    minimum_backoff_s     = optional(number, 10)
    maximum_backoff_s     = optional(number, 600)
    ack_deadline_s        = optional(number, 600)
    message_retention_s   = optional(number, 604800)
  })
  default = {}

  validation {
    condition     = var.pubsub.max_delivery_attempts >= 5 && var.pubsub.max_delivery_attempts <= 100
    error_message = "pubsub.max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
  validation {
    condition     = var.pubsub.ack_deadline_s >= 10 && var.pubsub.ack_deadline_s <= 600
    error_message = "pubsub.ack_deadline_s must be between 10 and 600."
  }
  validation {
    condition     = var.pubsub.message_retention_s >= 600 && var.pubsub.message_retention_s <= 604800
    error_message = "pubsub.message_retention_s must be between 600 (10 minutes) and 604800 (7 days)."
  }
  validation {
    condition     = var.pubsub.max_delivery_attempts >= var.destination_retry_attempts
    error_message = "pubsub.max_delivery_attempts must be at least destination_retry_attempts: the dead-letter policy is the backstop where route cannot count attempts, and must not cut a destination's retries short."
  }
  validation {
    condition     = var.pubsub.minimum_backoff_s <= var.pubsub.maximum_backoff_s && var.pubsub.maximum_backoff_s <= 600
    error_message = "pubsub: minimum_backoff_s <= maximum_backoff_s <= 600."
  }
}

variable "destination_retry_attempts" {
  description = "The highest retry.max_attempts of the configured destinations (and settings.stage_max_attempts). The route subscription's dead-letter policy must not cut a destination's retries short: on the emulator, and wherever deliveryAttempt is missing, route cannot count, and the dead-letter policy is the backstop (docs/architecture.md, GCP runtime)."
  type        = number
  default     = 5

  validation {
    condition     = var.destination_retry_attempts >= 1
    error_message = "destination_retry_attempts must be at least 1."
  }
}

variable "function_source" {
  description = <<-EOT
    Where the functions' source bundles are (Cloud Build uploads them): bucket, and
    either object (one bundle with every entry point: functions/main.py at its root),
    or objects (entry point -> object) for a bundle per function. An entry point in
    neither takes functions/<entry>.zip.
  EOT
  type = object({
    bucket  = string
    object  = optional(string)
    objects = optional(map(string), {})
  })
}

variable "function_runtime" {
  description = "Cloud Run functions runtime of every function."
  type        = string
  default     = "python312"
}

variable "max_instance_bytes" {
  description = <<-EOT
    N, the largest DICOM instance (bytes) the deployment accepts. Functions hold their
    /tmp in memory, so memory = process + temporary disk (docs/architecture.md, "Large
    instances: memory and temporary disk"), per concurrent request:
      match, route, poll, ghc_ingest: N + 256 MB;  morph: 2N + 256 MB;  stow: 2N + 256 MB;
      dead_letter, release_held, api, spanner: 512 MB (no instance in /tmp).
    Each is rounded up to the next size Cloud Run accepts (256Mi ... 32Gi) and takes the
    CPUs that size needs (over 4Gi: 2, over 8Gi: 4, over 16Gi: 6, over 24Gi: 8).
    functions.<entry>.memory overrides it.
  EOT
  type        = number
  default     = 268435456 # 256 MB

  validation {
    condition     = var.max_instance_bytes > 0 && var.max_instance_bytes <= 15 * 1073741824
    error_message = "max_instance_bytes must be positive and at most 15 GiB (morph's 2N + 256 MB must fit in Cloud Run's 32Gi)."
  }
}

variable "functions" {
  description = "Per entry point (match, morph, route, dead_letter, release_held, poll, ghc_ingest, stow, api, spanner) overrides: memory (e.g. 2Gi; default from max_instance_bytes), cpu, timeout_s, concurrency (requests per instance; memory is sized per request), min_instances, max_instances (also bounds a destination's concurrency across instances)."
  type = map(object({
    memory        = optional(string)
    cpu           = optional(string)
    timeout_s     = optional(number)
    concurrency   = optional(number)
    min_instances = optional(number)
    max_instances = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for k in keys(var.functions) : contains(["match", "morph", "route", "dead_letter", "release_held", "poll", "ghc_ingest", "stow", "api", "spanner"], k)])
    error_message = "functions: keys are entry points of functions/main.py."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.timeout_s == null ? true : f.timeout_s <= 600])
    error_message = "functions.*.timeout_s: at most 600 (Pub/Sub push waits at most its 600 s ack deadline)."
  }
}

variable "log_level" {
  description = "AXIOM_LOG_LEVEL of the functions and the gateway."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level: DEBUG, INFO, WARNING or ERROR."
  }
}

variable "config_ttl_s" {
  description = "AXIOM_CONFIG_TTL_S: seconds a function reuses the config it read from Firestore (a config change reaches the stages within this)."
  type        = number
  default     = 5
}

variable "firestore" {
  description = "The Firestore database (native mode): database id ((default) or a named one: AXIOM_FIRESTORE_DATABASE), location (null: var.region), collection_prefix (AXIOM_COLLECTION_PREFIX), create (false: use an existing database), delete_protection."
  type = object({
    database          = optional(string, "(default)")
    location          = optional(string)
    collection_prefix = optional(string, "")
    create            = optional(bool, true)
    delete_protection = optional(bool, true)
  })
  default = {}
}

variable "firestore_indexes_file" {
  description = "JSON list of the composite indexes the code's queries need: [{collection, fields: [{field, order: ASCENDING|DESCENDING}]}]; collections without the prefix."
  type        = string
  default     = null
}

variable "secrets" {
  description = "Secret Manager secrets the config refers to (gsm:projects/P/secrets/ID/versions/V), by a name of yours -> secret id. They are created empty (add versions out of Terraform) unless create = false; route, poll and the gateway get roles/secretmanager.secretAccessor on these only."
  type = object({
    ids    = optional(map(string), {})
    create = optional(bool, true)
  })
  default = {}
}

variable "pollers" {
  description = "Sources polled by Cloud Scheduler (the config's sources ids): source_id -> cron schedule (e.g. */5 * * * *). One job each publishes {\"source_id\": ...} to the poll topic."
  type        = map(string)
  default     = {}
}

variable "release_held_schedule" {
  description = "Cron schedule of release_held (sends deliveries held for destinations enabled again)."
  type        = string
  default     = "* * * * *"
}

variable "scheduler_time_zone" {
  description = "Time zone of the Cloud Scheduler schedules."
  type        = string
  default     = "Etc/UTC"
}

variable "api" {
  description = "The config API function: public (allUsers may invoke; the API checks API keys and Google ID tokens itself), audience (AXIOM_API_AUDIENCE, comma-separated; empty: Google ID tokens are not accepted)."
  type = object({
    public   = optional(bool, true)
    audience = optional(string, "")
  })
  default = {}
}

variable "spanner" {
  description = <<-EOT
    The spanner (shared/spanner/): its function (public: allUsers may invoke, as api;
    vpc_connector: a Serverless VPC Access connector, projects/P/locations/R/connectors/C,
    through which the function and the job reach PACS on private addresses, egress
    through it private ranges only; null: none) and the Cloud Run job of its async
    queries, one task per source: job.image (default: the gateway image, which holds
    what `python -m shared.cli spanner run-task` needs), job.task_timeout_s, job.cpu,
    job.memory (of one task).
  EOT
  type = object({
    public        = optional(bool, true)
    vpc_connector = optional(string)
    job = optional(object({
      image          = optional(string)
      task_timeout_s = optional(number, 300)
      cpu            = optional(string, "1")
      memory         = optional(string, "512Mi")
    }), {})
  })
  default = {}

  validation {
    condition     = var.spanner.job.image != null || var.gateway_image != null || var.gateway.image != null
    error_message = "spanner.job.image (or gateway_image, or gateway.image) is required: the spanner job runs that image."
  }
  validation {
    condition     = var.spanner.job.task_timeout_s > 0 && var.spanner.job.task_timeout_s <= 86400
    error_message = "spanner.job.task_timeout_s: 1 to 86400 seconds."
  }
}

variable "crosswalk" {
  description = <<-EOT
    The crosswalk and crosswalk_sync functions, the only ones that reach the crosswalk
    databases: vpc_connector (a Serverless VPC Access connector,
    projects/P/locations/R/connectors/C, through which they reach databases on private
    addresses; null: none, for Cloud SQL through its connector's public IP or no
    database at all; egress through it is private ranges only), sync_schedule (cron of
    the check for synced maps that are due; each map's sync.every_s decides).
  EOT
  type = object({
    vpc_connector = optional(string)
    sync_schedule = optional(string, "*/5 * * * *")
  })
  default = {}
}

variable "stow" {
  description = "The STOW-RS function: public (allUsers may invoke; it checks API keys itself)."
  type = object({
    public = optional(bool, true)
  })
  default = {}
}

variable "gateway" {
  description = <<-EOT
    The SCP gateway (scp_gateway/): enabled, image (built from scp_gateway/Dockerfile),
    network and subnetwork (Private Google Access on), load_balancer INTERNAL or EXTERNAL,
    allowed_source_ranges (the only addresses that reach the DICOM port), port (the
    DICOM port the load balancer, firewall and health checks use: the config's listeners
    decide what the gateway opens, so one of them must listen on it), min_free_bytes
    (refuse below this free spool space),
    machine_type, instance_count, boot_disk_gb (holds the spool).
  EOT
  type = object({
    enabled               = optional(bool, true)
    image                 = optional(string)
    network               = optional(string, "default")
    subnetwork            = optional(string, "default")
    load_balancer         = optional(string, "INTERNAL")
    allowed_source_ranges = optional(list(string), [])
    port                  = optional(number, 11112)
    min_free_bytes        = optional(number, 1073741824)
    machine_type          = optional(string, "e2-standard-2")
    instance_count        = optional(number, 2)
    boot_disk_gb          = optional(number, 50)
  })
  default = {}

  validation {
    condition     = contains(["INTERNAL", "EXTERNAL"], var.gateway.load_balancer)
    error_message = "gateway.load_balancer: INTERNAL or EXTERNAL."
  }
  validation {
    condition     = !var.gateway.enabled || var.gateway.image != null || var.gateway_image != null
    error_message = "gateway.image (or gateway_image) is required when the gateway is enabled."
  }
  validation {
    condition     = !contains(var.gateway.allowed_source_ranges, "0.0.0.0/0")
    error_message = "gateway.allowed_source_ranges: name your senders' ranges; 0.0.0.0/0 opens the DICOM port to everyone."
  }
  validation {
    condition     = alltrue([for r in var.gateway.allowed_source_ranges : can(cidrhost(r, 0))])
    error_message = "gateway.allowed_source_ranges: CIDR ranges, e.g. 10.20.0.0/16."
  }
}

variable "healthcare" {
  description = "Optional Cloud Healthcare API dataset and DICOM store whose notifications feed ghc_ingest: enabled, dataset, dicom_store, location (null: var.region)."
  type = object({
    enabled     = optional(bool, false)
    dataset     = optional(string, "axiom")
    dicom_store = optional(string, "axiom")
    location    = optional(string)
  })
  default = {}
}

variable "monitoring" {
  description = "Alerting: notification_channels (ids of existing channels), failure_rate_threshold (failed stage calls per second over 10 minutes before an alert)."
  type = object({
    notification_channels  = optional(list(string), [])
    failure_rate_threshold = optional(number, 0.1)
  })
  default = {}
}

variable "gateway_image" {
  description = "The gateway image built by Cloud Build (cloudbuild.yaml writes it to build.auto.tfvars.json); when set, it replaces gateway.image, so a deployment's own gateway settings need not name a build."
  type        = string
  default     = null
}
