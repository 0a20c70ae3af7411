# One Cloud Run job (the spanner's async queries: one task per source) with its own
# service account holding only the roles given in var.roles (the table in
# docs/gcp-iam.md). An execution is started by a caller holding
# roles/run.jobsExecutorWithOverrides on the job, which sets the task count and the
# environment of that execution only.

resource "google_service_account" "job" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "Axiom Flow job ${var.name}"
}

locals {
  member = "serviceAccount:${google_service_account.job.email}"
  by_scope = {
    for scope in ["project", "secret", "dicom_store"] :
    scope => { for key, r in var.roles : key => r if r.scope == scope }
  }
}

resource "google_project_iam_member" "job" {
  for_each = local.by_scope["project"]
  project  = var.project_id
  role     = each.value.role
  member   = local.member
}

resource "google_secret_manager_secret_iam_member" "job" {
  for_each  = local.by_scope["secret"]
  project   = var.project_id
  secret_id = each.value.resource
  role      = each.value.role
  member    = local.member
}

resource "google_healthcare_dicom_store_iam_member" "job" {
  for_each       = local.by_scope["dicom_store"]
  dicom_store_id = each.value.resource
  role           = each.value.role
  member         = local.member
}

# No depends_on the role grants above: the caller's grant on this job is keyed by the
# job's name (a cycle otherwise), and nothing runs until an execution is started.
resource "google_cloud_run_v2_job" "job" {
  project             = var.project_id
  location            = var.region
  name                = var.name
  labels              = var.labels
  deletion_protection = var.deletion_protection

  template {
    labels     = var.labels
    task_count = 1 # each execution sets its own (one task per source), all run at once

    template {
      service_account = google_service_account.job.email
      # a failed task is a source that did not answer: its part says so, and a rerun
      # would only delay the merged answer past the spanner's deadline
      max_retries    = 0
      timeout        = "${var.task_timeout_s}s"
      encryption_key = var.kms_key_name

      containers {
        image   = var.image
        command = var.command

        dynamic "env" {
          for_each = var.environment
          content {
            name  = env.key
            value = env.value
          }
        }

        resources {
          limits = {
            cpu    = var.cpu
            memory = var.memory
          }
        }
      }

      dynamic "vpc_access" {
        for_each = var.vpc_connector == null ? [] : [var.vpc_connector]
        content {
          connector = vpc_access.value
          egress    = "PRIVATE_RANGES_ONLY"
        }
      }
    }
  }
}
