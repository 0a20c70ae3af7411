variable "project_id" {
  description = "Project of the gateway."
  type        = string
}

variable "region" {
  description = "Region of the instance group and its load balancer."
  type        = string
}

variable "name" {
  description = "Name prefix of the gateway's resources, e.g. axiom-gateway."
  type        = string
}

variable "service_account_id" {
  description = "account_id of the gateway's own service account."
  type        = string
}

variable "roles" {
  description = "IAM of the gateway's service account, keyed by a stable name: {scope = project|bucket|secret, resource, role}."
  type = map(object({
    scope    = string
    resource = string
    role     = string
  }))
  default = {}

  validation {
    condition     = alltrue([for r in values(var.roles) : contains(["project", "bucket", "secret"], r.scope)])
    error_message = "Each role's scope is one of project, bucket, secret."
  }
}

variable "image" {
  description = "The gateway container image (scp_gateway/Dockerfile), e.g. europe-west4-docker.pkg.dev/P/axiom-flow/scp-gateway:TAG."
  type        = string
}

variable "environment" {
  description = "Environment of the container (scp_gateway/__main__.py)."
  type        = map(string)
}

variable "dicom_port" {
  description = "The DICOM port the container listens on and the load balancer forwards."
  type        = number
}

variable "network" {
  description = "VPC network self link or name."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork self link or name (enable Private Google Access on it: the instances have no external address and pull the image and write to GCS through it)."
  type        = string
}

variable "machine_type" {
  description = "Machine type of the instances."
  type        = string
}

variable "instance_count" {
  description = "Instances in the regional managed instance group."
  type        = number
}

variable "boot_disk_gb" {
  description = "Boot disk size; the spool (one file per C-STORE in progress) lives on it."
  type        = number
}

variable "kms_key_self_link" {
  description = "CMEK for the boot disks (null: Google-managed keys)."
  type        = string
  default     = null
}

variable "load_balancer" {
  description = "INTERNAL or EXTERNAL passthrough TCP load balancer."
  type        = string
}

variable "allowed_source_ranges" {
  description = "CIDR ranges allowed to reach the DICOM port."
  type        = list(string)
}

variable "labels" {
  description = "Labels on the instances."
  type        = map(string)
  default     = {}
}
