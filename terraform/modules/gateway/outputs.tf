output "address" {
  description = "The load balancer's IP address: point DICOM senders at it and var.dicom_port."
  value       = google_compute_address.gateway.address
}

output "service_account_email" {
  description = "The gateway's own service account."
  value       = google_service_account.gateway.email
}

output "instance_group" {
  description = "The managed instance group."
  value       = google_compute_region_instance_group_manager.gateway.instance_group
}

output "name" {
  description = "Name prefix of the gateway's instances."
  value       = var.name
}
