output "id" {
  description = "The job's full name, projects/P/locations/L/jobs/J (what an execution is started on)."
  value       = google_cloud_run_v2_job.job.id
}

output "name" {
  description = "The job's short name."
  value       = google_cloud_run_v2_job.job.name
}

output "service_account_email" {
  description = "The job's own service account."
  value       = google_service_account.job.email
}
