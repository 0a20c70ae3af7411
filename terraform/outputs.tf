output "buckets" {
  description = "Bucket names by kind: load them into the config as settings.ingest_bucket, processed_bucket, quarantine_bucket."
  value       = { for kind, b in google_storage_bucket.bucket : kind => b.name }
}

output "topics" {
  description = "Pub/Sub topic names by their name in the code (ingest, planned, deliver, dead-letter) and this module's own (poll, release-held, dead-letter-unrecorded, healthcare)."
  value       = { for t, topic in google_pubsub_topic.topic : t => topic.name }
}

output "subscriptions" {
  description = "Push subscription names by source topic."
  value       = { for k, s in google_pubsub_subscription.push : k => s.name }
}

output "function_uris" {
  description = "Each function's URL by entry point; api's + /api/v1/ is the config API, stow's + /studies the STOW-RS endpoint."
  value       = { for e, f in module.function : e => f.uri }
}

output "api_url" {
  description = "The config API's base URL (AXIOM_URL of the axiom-flow exceptions/users commands)."
  value       = "${module.function["api"].uri}/api/v1"
}

output "spanner_url" {
  description = "The spanner function's API base URL (its QIDO-RS endpoints are under /spanner/qido/)."
  value       = "${module.function["spanner"].uri}/api/v1"
}

output "spanner_job" {
  description = "The spanner's Cloud Run job (AXIOM_SPANNER_JOB): projects/P/locations/L/jobs/J."
  value       = module.spanner_query.id
}

output "service_accounts" {
  description = "Service account e-mail by function entry point, spanner_job, and gateway."
  value = merge(
    { for e, f in module.function : e => f.service_account_email },
    { spanner_job = module.spanner_query.service_account_email },
    { for g in module.gateway : "gateway" => g.service_account_email },
  )
}

output "gateway_address" {
  description = "The SCP gateway's load balancer address (null when the gateway is disabled)."
  value       = one(module.gateway[*].address)
}

output "firestore_database" {
  description = "The Firestore database id (AXIOM_FIRESTORE_DATABASE)."
  value       = var.firestore.database
}

output "dicom_store" {
  description = "The Healthcare API DICOM store's id (null when disabled)."
  value       = one(google_healthcare_dicom_store.store[*].id)
}

output "environment" {
  description = "The functions' environment (for running the CLI or a local function against this deployment)."
  value       = local.function_environment
}
