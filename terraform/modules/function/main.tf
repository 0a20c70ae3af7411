# One Cloud Run function (2nd gen) with its own service account holding only the roles
# given in var.roles (the table in docs/gcp-iam.md). Pub/Sub-fed functions have no
# event_trigger: an Eventarc trigger creates a subscription Terraform cannot give a
# dead-letter policy, so the root module pushes its own subscriptions to the URL.

resource "google_service_account" "function" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "Axiom Flow function ${var.entry_point}"
}

locals {
  member = "serviceAccount:${google_service_account.function.email}"
  by_scope = {
    for scope in ["project", "bucket", "topic", "secret", "dicom_store", "job"] :
    scope => { for key, r in var.roles : key => r if r.scope == scope }
  }
}

resource "google_project_iam_member" "function" {
  for_each = local.by_scope["project"]
  project  = var.project_id
  role     = each.value.role
  member   = local.member
}

resource "google_storage_bucket_iam_member" "function" {
  for_each = local.by_scope["bucket"]
  bucket   = each.value.resource
  role     = each.value.role
  member   = local.member
}

resource "google_pubsub_topic_iam_member" "function" {
  for_each = local.by_scope["topic"]
  project  = var.project_id
  topic    = each.value.resource
  role     = each.value.role
  member   = local.member
}

resource "google_secret_manager_secret_iam_member" "function" {
  for_each  = local.by_scope["secret"]
  project   = var.project_id
  secret_id = each.value.resource
  role      = each.value.role
  member    = local.member
}

resource "google_healthcare_dicom_store_iam_member" "function" {
  for_each       = local.by_scope["dicom_store"]
  dicom_store_id = each.value.resource
  role           = each.value.role
  member         = local.member
}

# a Cloud Run job of this module's region (the spanner's: the function starts its executions)
resource "google_cloud_run_v2_job_iam_member" "function" {
  for_each = local.by_scope["job"]
  project  = var.project_id
  location = var.region
  name     = each.value.resource
  role     = each.value.role
  member   = local.member
}

resource "google_cloudfunctions2_function" "function" {
  project      = var.project_id
  location     = var.region
  name         = var.name
  description  = "Axiom Flow ${var.entry_point} (functions/${var.source_file})"
  labels       = var.labels
  kms_key_name = var.kms_key_name

  build_config {
    runtime     = var.runtime
    entry_point = var.entry_point
    # the bundle's file that defines entry_point (the buildpack's default is main.py)
    environment_variables = { GOOGLE_FUNCTION_SOURCE = var.source_file }
    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function.email
    available_memory                 = var.resources.memory
    available_cpu                    = var.resources.cpu
    timeout_seconds                  = var.resources.timeout_s
    max_instance_request_concurrency = var.resources.concurrency
    min_instance_count               = var.resources.min_instances
    max_instance_count               = var.resources.max_instances
    ingress_settings                 = var.ingress
    all_traffic_on_latest_revision   = true
    environment_variables            = var.environment
    vpc_connector                    = var.vpc_connector
    vpc_connector_egress_settings    = var.vpc_connector == null ? null : "PRIVATE_RANGES_ONLY"
  }

  # the roles are in place before the first instance starts
  depends_on = [
    google_project_iam_member.function,
    google_storage_bucket_iam_member.function,
    google_pubsub_topic_iam_member.function,
    google_secret_manager_secret_iam_member.function,
    google_healthcare_dicom_store_iam_member.function,
    google_cloud_run_v2_job_iam_member.function,
  ]
}

resource "google_cloud_run_service_iam_member" "invoker" {
  for_each = toset(var.invokers)
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_service_iam_member" "public" {
  #checkov:skip=CKV_GCP_102:api and stow check every request themselves (API keys, Google ID tokens); see docs/architecture.md "The config API as a function"
  count    = var.public ? 1 : 0
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function.service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}
