# The smallest deployment: functions from one shared bundle, an internal gateway
# reachable from one range. Run from an empty project (the module enables the APIs).
module "axiom_flow" {
  source = "../.."

  project_id = var.project_id
  region     = "europe-west4"

  function_source = {
    bucket = var.source_bucket
    object = var.source_object
  }

  gateway = {
    image                 = var.gateway_image
    allowed_source_ranges = ["10.0.0.0/8"]
  }

  firestore = {
    delete_protection = false
  }
}

variable "project_id" {
  description = "An empty project to deploy into."
  type        = string
}

variable "source_bucket" {
  description = "Bucket Cloud Build uploaded the function bundles to."
  type        = string
}

variable "source_object" {
  description = "The bundle's object in source_bucket (functions/functions-<sha256>.zip, as Cloud Build names it)."
  type        = string
}

variable "gateway_image" {
  description = "The gateway image Cloud Build pushed."
  type        = string
}

output "api_url" {
  description = "The config API."
  value       = module.axiom_flow.api_url
}

output "buckets" {
  description = "Bucket names to load into the config's settings."
  value       = module.axiom_flow.buckets
}
