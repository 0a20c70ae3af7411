variable "project_id" {
  description = "Project the job and its service account live in."
  type        = string
}

variable "region" {
  description = "Region of the job."
  type        = string
}

variable "name" {
  description = "Job name, e.g. axiom-spanner-query."
  type        = string
}

variable "service_account_id" {
  description = "account_id of the job's own service account (6-30 characters)."
  type        = string
}

variable "image" {
  description = "The container image (the gateway image, scp_gateway/Dockerfile: the lock's packages and shared/)."
  type        = string
}

variable "command" {
  description = "The container's command, e.g. [\"python\", \"-m\", \"shared.cli\", \"spanner\", \"run-task\"]."
  type        = list(string)
}

variable "environment" {
  description = "Environment variables of every task (names as shared/runtime/gcp.py reads them)."
  type        = map(string)
  default     = {}
}

variable "task_timeout_s" {
  description = "Seconds a task may run before Cloud Run stops it."
  type        = number
  default     = 300
}

variable "cpu" {
  description = "CPUs of a task, e.g. 1."
  type        = string
  default     = "1"
}

variable "memory" {
  description = "Memory of a task (Cloud Run quantity, e.g. 512Mi)."
  type        = string
  default     = "512Mi"
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector for private addresses (the PACS); null: none."
  type        = string
  default     = null
}

variable "kms_key_name" {
  description = "CMEK for the job's container image (null: Google-managed keys)."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Refuse to destroy the job (it holds no data; an execution in flight is lost)."
  type        = bool
  default     = false
}

variable "roles" {
  description = "IAM of the job's service account, keyed by a stable name: {scope = project|secret|dicom_store, resource = the resource's id or name (empty for project), role}."
  type = map(object({
    scope    = string
    resource = string
    role     = string
  }))
  default = {}

  validation {
    condition     = alltrue([for r in values(var.roles) : contains(["project", "secret", "dicom_store"], r.scope)])
    error_message = "Each role's scope is one of project, secret, dicom_store."
  }
}

variable "labels" {
  description = "Labels on the job and its executions."
  type        = map(string)
  default     = {}
}
