terraform {
  required_version = ">= 1.9" # variable validations that refer to other variables

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
