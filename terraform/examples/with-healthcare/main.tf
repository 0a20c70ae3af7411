# A Healthcare API DICOM store feeding ghc_ingest, pollers on a schedule, secrets for
# destinations, an external gateway load balancer and CMEK.
module "axiom_flow" {
  source = "../.."

  project_id   = var.project_id
  region       = "europe-west4"
  kms_key_name = var.kms_key_name

  function_source = {
    bucket = var.source_bucket
  }

  max_instance_bytes         = 1073741824 # 1 GB: match/route 2Gi, morph 4Gi
  destination_retry_attempts = 8
  pubsub = {
    max_delivery_attempts = 10
  }

  retention = {
    received_days  = 60
    processed_days = 60
  }

  secrets = {
    ids = { pacs_tls_key = "axiom-pacs-tls-key", archive_password = "axiom-archive-password" }
  }

  pollers = {
    orthanc-qido = "*/5 * * * *"
  }

  healthcare = {
    enabled     = true
    dataset     = "imaging"
    dicom_store = "incoming"
  }

  gateway = {
    image                 = var.gateway_image
    load_balancer         = "EXTERNAL"
    allowed_source_ranges = ["203.0.113.0/24"]
    instance_count        = 3
  }

  monitoring = {
    notification_channels = var.notification_channels
  }
}

variable "project_id" {
  description = "The project to deploy into."
  type        = string
}

variable "source_bucket" {
  description = "Bucket holding functions/<entry>.zip, one bundle per function."
  type        = string
}

variable "gateway_image" {
  description = "The gateway image."
  type        = string
}

variable "kms_key_name" {
  description = "Cloud KMS key for buckets, topics, secrets and disks."
  type        = string
}

variable "notification_channels" {
  description = "Monitoring notification channel ids for the alerts."
  type        = list(string)
  default     = []
}

output "gateway_address" {
  description = "Where DICOM senders connect."
  value       = module.axiom_flow.gateway_address
}

output "dicom_store" {
  description = "The Healthcare API store."
  value       = module.axiom_flow.dicom_store
}
