variable "project_id" {
  description = "Project the function and its service account live in."
  type        = string
}

variable "region" {
  description = "Region of the function (its Cloud Run service)."
  type        = string
}

variable "name" {
  description = "Function name (also its Cloud Run service's name), e.g. axiom-match."
  type        = string
}

variable "entry_point" {
  description = "The Python function in the bundle's source_file, e.g. match."
  type        = string
}

variable "source_file" {
  description = "The bundle's file that defines entry_point: main.py, or api.py for the config API (functions/)."
  type        = string
  default     = "main.py"

  validation {
    condition     = contains(["main.py", "api.py"], var.source_file)
    error_message = "source_file: main.py or api.py."
  }
}

variable "runtime" {
  description = "Cloud Run functions runtime, e.g. python312."
  type        = string
}

variable "source_bucket" {
  description = "Bucket of the source bundle (a zip with main.py and api.py at its root)."
  type        = string
}

variable "source_object" {
  description = "Object name of the source bundle in source_bucket."
  type        = string
}

variable "service_account_id" {
  description = "account_id of the function's own service account (6-30 characters)."
  type        = string
}

variable "environment" {
  description = "Environment variables of the function (names as shared/runtime/gcp.py reads them)."
  type        = map(string)
  default     = {}
}

variable "resources" {
  description = "Sizing: memory (Cloud Run quantity, e.g. 1Gi: the process plus /tmp, which is in memory), cpu, timeout_s, concurrency, min and max instances."
  type = object({
    memory        = string
    cpu           = string
    timeout_s     = number
    concurrency   = number
    min_instances = number
    max_instances = number
  })
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector for private addresses (the crosswalk functions' databases, the spanner's PACS); null: none."
  type        = string
  default     = null
}

variable "ingress" {
  description = "ALLOW_INTERNAL_ONLY for functions fed by Pub/Sub push, ALLOW_ALL for HTTP functions called from outside."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"
}

variable "public" {
  description = "Grant roles/run.invoker to allUsers: the function authenticates callers itself (api, stow)."
  type        = bool
  default     = false
}

variable "invokers" {
  description = "Members granted roles/run.invoker on the function's service (e.g. the Pub/Sub push service account)."
  type        = list(string)
  default     = []
}

variable "kms_key_name" {
  description = "CMEK for the function's build artefacts and image (null: Google-managed keys)."
  type        = string
  default     = null
}

variable "roles" {
  description = "IAM of the function's service account, keyed by a stable name: {scope = project|bucket|topic|secret|dicom_store|job, resource = the resource's id or name (empty for project), role}."
  type = map(object({
    scope    = string
    resource = string
    role     = string
  }))
  default = {}

  validation {
    condition     = alltrue([for r in values(var.roles) : contains(["project", "bucket", "topic", "secret", "dicom_store", "job"], r.scope)])
    error_message = "Each role's scope is one of project, bucket, topic, secret, dicom_store, job."
  }
}

variable "labels" {
  description = "Labels on the function."
  type        = map(string)
  default     = {}
}
