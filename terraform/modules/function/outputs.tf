output "name" {
  description = "The function's name."
  value       = google_cloudfunctions2_function.function.name
}

output "uri" {
  description = "The function's HTTPS URL (Pub/Sub push endpoint, or the API/STOW-RS base URL)."
  value       = google_cloudfunctions2_function.function.service_config[0].uri
}

output "service" {
  description = "The function's Cloud Run service."
  value       = google_cloudfunctions2_function.function.service_config[0].service
}

output "service_account_email" {
  description = "The function's own service account."
  value       = google_service_account.function.email
}
