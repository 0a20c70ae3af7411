terraform {
  required_version = ">= 1.9" # variable validations that refer to other variables

  # state in a bucket: `terraform init -backend-config=bucket=BUCKET -backend-config=prefix=PREFIX`
  # (cloudbuild.yaml does; `terraform init -backend=false` to only validate); ignored when
  # this directory is used as a module (examples/)
  backend "gcs" {}

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 7.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.0, < 7.0"
    }
  }

  provider_meta "google" {
    module_name = "axiom-flow/terraform/v0.1.0"
  }
}
