terraform {
  required_version = ">= 1.9" # variable validations that refer to other variables

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 7.0"
    }
  }
}
