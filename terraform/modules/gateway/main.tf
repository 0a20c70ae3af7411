# The SCP gateway (python -m scp_gateway) on Container-Optimized OS: a regional managed
# instance group behind a passthrough TCP load balancer (client addresses reach the
# instances, so the firewall below is the access list).

locals {
  member = "serviceAccount:${google_service_account.gateway.email}"
  # Google's health checkers; external passthrough load balancers also probe from the
  # 209.85 ranges (https://cloud.google.com/load-balancing/docs/health-check-concepts)
  health_check_ranges = var.load_balancer == "EXTERNAL" ? ["35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"] : ["35.191.0.0/16", "130.211.0.0/22"]
  spool_host_dir      = "/var/lib/axiom/spool"
  container_env       = join(" ", [for k in sort(keys(var.environment)) : "-e ${k}=${var.environment[k]}"])
  registry            = split("/", var.image)[0]
  # cloud-init on COS: a systemd unit runs the container; the spool survives restarts
  # of the container (the gateway sweeps what a previous run left) on the stateful
  # partition. The image's user (uid 10001) owns it.
  cloud_init = <<-EOT
    #cloud-config
    write_files:
      - path: /etc/systemd/system/axiom-gateway.service
        permissions: "0644"
        content: |
          [Unit]
          Description=Axiom Flow SCP gateway
          Wants=network-online.target
          After=network-online.target docker.service
          [Service]
          Environment=HOME=/var/lib/axiom
          ExecStartPre=/bin/mkdir -p ${local.spool_host_dir}
          ExecStartPre=/bin/chown 10001 ${local.spool_host_dir}
          ExecStartPre=/usr/bin/docker-credential-gcr configure-docker --registries=${local.registry}
          ExecStartPre=-/usr/bin/docker rm -f axiom-gateway
          ExecStart=/usr/bin/docker run --rm --name axiom-gateway --network host -v ${local.spool_host_dir}:/spool ${local.container_env} ${var.image}
          ExecStop=/usr/bin/docker stop -t 60 axiom-gateway
          Restart=always
          RestartSec=5
    runcmd:
      - systemctl daemon-reload
      - systemctl start axiom-gateway.service
  EOT
}

resource "google_service_account" "gateway" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "Axiom Flow SCP gateway"
}

resource "google_project_iam_member" "gateway" {
  for_each = { for k, r in var.roles : k => r if r.scope == "project" }
  project  = var.project_id
  role     = each.value.role
  member   = local.member
}

resource "google_storage_bucket_iam_member" "gateway" {
  for_each = { for k, r in var.roles : k => r if r.scope == "bucket" }
  bucket   = each.value.resource
  role     = each.value.role
  member   = local.member
}

resource "google_secret_manager_secret_iam_member" "gateway" {
  for_each  = { for k, r in var.roles : k => r if r.scope == "secret" }
  project   = var.project_id
  secret_id = each.value.resource
  role      = each.value.role
  member    = local.member
}

resource "google_compute_instance_template" "gateway" {
  #checkov:skip=CKV_GCP_38:boot disks take a CMEK through var.kms_key_self_link; CSEK (customer-supplied raw keys) cannot be used by a managed instance group
  project      = var.project_id
  name_prefix  = "${var.name}-"
  region       = var.region
  machine_type = var.machine_type
  labels       = var.labels
  tags         = [var.name]

  disk {
    source_image = "projects/cos-cloud/global/images/family/cos-stable"
    disk_size_gb = var.boot_disk_gb
    disk_type    = "pd-balanced"
    boot         = true
    auto_delete  = true
    dynamic "disk_encryption_key" {
      for_each = var.kms_key_self_link == null ? [] : [var.kms_key_self_link]
      content {
        kms_key_self_link = disk_encryption_key.value
      }
    }
  }

  # no access_config: no external address (image pulls and GCS through Private Google Access)
  network_interface {
    network    = var.network
    subnetwork = var.subnetwork
  }

  metadata = {
    user-data                 = local.cloud_init
    google-logging-enabled    = "true"
    google-monitoring-enabled = "true"
    block-project-ssh-keys    = "true"
    enable-oslogin            = "TRUE"
    serial-port-enable        = "FALSE"
    cos-update-strategy       = "update_disabled"
  }

  service_account {
    email  = google_service_account.gateway.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  can_ip_forward = false

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_region_health_check" "gateway" {
  project             = var.project_id
  region              = var.region
  name                = "${var.name}-dicom"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 3

  # the gateway has no HTTP port: a TCP connect to the DICOM listener (it closes an
  # unassociated connection after the 5 s ACSE timeout, well within its limits)
  tcp_health_check {
    port = var.dicom_port
  }

  log_config {
    enable = true
  }
}

resource "google_compute_region_instance_group_manager" "gateway" {
  project            = var.project_id
  region             = var.region
  name               = var.name
  base_instance_name = var.name
  target_size        = var.instance_count

  version {
    instance_template = google_compute_instance_template.gateway.id
  }

  named_port {
    name = "dicom"
    port = var.dicom_port
  }

  auto_healing_policies {
    health_check      = google_compute_region_health_check.gateway.id
    initial_delay_sec = 180
  }

  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    max_surge_fixed       = 3
    max_unavailable_fixed = 0
  }
}

resource "google_compute_region_backend_service" "gateway" {
  project               = var.project_id
  region                = var.region
  name                  = var.name
  protocol              = "TCP"
  load_balancing_scheme = var.load_balancer
  health_checks         = [google_compute_region_health_check.gateway.id]
  # associations in progress finish before an instance leaves
  connection_draining_timeout_sec = 300

  backend {
    group          = google_compute_region_instance_group_manager.gateway.instance_group
    balancing_mode = "CONNECTION"
  }
}

resource "google_compute_address" "gateway" {
  project      = var.project_id
  region       = var.region
  name         = var.name
  address_type = var.load_balancer
  subnetwork   = var.load_balancer == "INTERNAL" ? var.subnetwork : null
}

resource "google_compute_forwarding_rule" "gateway" {
  project               = var.project_id
  region                = var.region
  name                  = var.name
  ip_address            = google_compute_address.gateway.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.dicom_port)]
  load_balancing_scheme = var.load_balancer
  backend_service       = google_compute_region_backend_service.gateway.id
  network               = var.load_balancer == "INTERNAL" ? var.network : null
  subnetwork            = var.load_balancer == "INTERNAL" ? var.subnetwork : null
}

resource "google_compute_firewall" "dicom" {
  project       = var.project_id
  name          = "${var.name}-dicom"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = var.allowed_source_ranges
  target_tags   = [var.name]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.dicom_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "health_checks" {
  project       = var.project_id
  name          = "${var.name}-health-checks"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = local.health_check_ranges
  target_tags   = [var.name]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.dicom_port)]
  }

  log_config {
    metadata = "EXCLUDE_ALL_METADATA"
  }
}
