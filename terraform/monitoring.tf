# Log-based metrics, a dashboard and alert policies. The structured log fields are
# named here only: each stage call ends with one JSON line (Cloud Logging's format)
# whose jsonPayload carries the stage, its outcome and its duration, with labels.
locals {
  log_field_stage       = "jsonPayload.stage"
  log_field_outcome     = "jsonPayload.outcome"
  log_field_duration_ms = "jsonPayload.duration_ms"
  log_label_stage       = "labels.stage"
  log_label_sop_uid     = "labels.sop_uid"
  log_label_destination = "labels.destination"
  log_label_rule        = "labels.rule"
  outcome_failed        = ["failed", "quarantined"]

  # the functions' Cloud Run services, and the stage-end lines they write
  functions_filter         = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=starts_with(\"${var.name_prefix}\")"
  stage_end_filter         = "${local.functions_filter} AND ${local.log_field_stage}:* AND ${local.log_field_outcome}:*"
  dead_letter_subscription = google_pubsub_subscription.push["dead-letter"].name
  channels                 = var.monitoring.notification_channels
}

resource "google_logging_metric" "stage_outcomes" {
  project     = var.project_id
  name        = "${var.name_prefix}stage_outcomes"
  description = "Stage calls by stage, outcome and destination (one per stage-end log line)."
  filter      = local.stage_end_filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "stage"
      value_type = "STRING"
    }
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
    labels {
      key        = "destination"
      value_type = "STRING"
    }
  }

  label_extractors = {
    stage       = "EXTRACT(${local.log_field_stage})"
    outcome     = "EXTRACT(${local.log_field_outcome})"
    destination = "EXTRACT(${local.log_label_destination})"
  }
}

resource "google_logging_metric" "stage_latency" {
  project         = var.project_id
  name            = "${var.name_prefix}stage_latency"
  description     = "Duration of stage calls (ms) by stage."
  filter          = "${local.stage_end_filter} AND ${local.log_field_duration_ms}:*"
  value_extractor = "EXTRACT(${local.log_field_duration_ms})"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"
    labels {
      key        = "stage"
      value_type = "STRING"
    }
  }

  label_extractors = {
    stage = "EXTRACT(${local.log_field_stage})"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 1
    }
  }
}

resource "google_logging_metric" "stage_failures" {
  project     = var.project_id
  name        = "${var.name_prefix}stage_failures"
  description = "Stage calls that failed or quarantined, by stage."
  filter      = "${local.stage_end_filter} AND (${join(" OR ", [for o in local.outcome_failed : "${local.log_field_outcome}=\"${o}\""])})"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "stage"
      value_type = "STRING"
    }
  }

  label_extractors = {
    stage = "EXTRACT(${local.log_field_stage})"
  }
}

resource "google_monitoring_dashboard" "axiom" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName = "Axiom Flow"
    mosaicLayout = {
      columns = 12
      tiles = [
        for i, w in [
          { title = "Ingest rate (match calls/s)", filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_outcomes.name}\" AND metric.label.stage=\"match\"", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group = ["metric.label.outcome"] },
          { title = "Stage latency p95 (ms)", filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_latency.name}\"", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_95", group = ["metric.label.stage"] },
          { title = "Deliveries by destination and outcome", filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_outcomes.name}\" AND metric.label.stage=\"route\"", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group = ["metric.label.destination", "metric.label.outcome"] },
          { title = "Failures by stage", filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_failures.name}\"", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group = ["metric.label.stage"] },
          { title = "Dead-letter depth", filter = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.label.subscription_id=\"${local.dead_letter_subscription}\"", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group = [] },
          { title = "Poller health (poll calls by outcome)", filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_outcomes.name}\" AND metric.label.stage=\"poll\"", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group = ["metric.label.outcome"] },
          ] : {
          xPos   = (i % 2) * 6
          yPos   = floor(i / 2) * 4
          width  = 6
          height = 4
          widget = {
            title = w.title
            xyChart = {
              dataSets = [{
                plotType = "LINE"
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = w.filter
                    aggregation = {
                      alignmentPeriod    = "60s"
                      perSeriesAligner   = w.aligner
                      crossSeriesReducer = w.reducer
                      groupByFields      = w.group
                    }
                  }
                }
              }]
            }
          }
        }
      ]
    }
  })
}

# Anything waiting in the dead-letter subscription for 10 minutes: dead_letter cannot
# record what the stages gave up on
resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  project               = var.project_id
  display_name          = "Axiom Flow: dead-letter subscription not empty"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "undelivered dead letters"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${local.dead_letter_subscription}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "600s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  conditions {
    display_name = "messages kept unrecorded (dead_letter itself failed, or a scheduler tick)"
    condition_threshold {
      filter          = "resource.type=\"pubsub_topic\" AND resource.label.topic_id=\"${google_pubsub_topic.topic["dead-letter-unrecorded"].name}\" AND metric.type=\"pubsub.googleapis.com/topic/send_message_operation_count\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "failure_rate" {
  project               = var.project_id
  display_name          = "Axiom Flow: stage failure rate"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "failed or quarantined stage calls per second"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_failures.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.monitoring.failure_rate_threshold
      duration        = "600s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

# Gateway down: an uptime TCP check on an external load balancer's address; for both
# kinds, the group's instances stop reporting uptime (all gone, none healthy)
resource "google_monitoring_uptime_check_config" "gateway" {
  count        = local.gateway_enabled && var.gateway.load_balancer == "EXTERNAL" ? 1 : 0
  project      = var.project_id
  display_name = "Axiom Flow SCP gateway"
  timeout      = "10s"
  period       = "60s"

  tcp_check {
    port = var.gateway.port
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = module.gateway[0].address
    }
  }
}

resource "google_monitoring_alert_policy" "gateway_down" {
  count                 = local.gateway_enabled ? 1 : 0
  project               = var.project_id
  display_name          = "Axiom Flow: SCP gateway down"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "no gateway instance running"
    condition_absent {
      filter   = "resource.type=\"gce_instance\" AND metric.type=\"compute.googleapis.com/instance/uptime\" AND metadata.system_labels.name=starts_with(\"${module.gateway[0].name}\")"
      duration = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_RATE"
      }
    }
  }

  dynamic "conditions" {
    for_each = google_monitoring_uptime_check_config.gateway
    content {
      display_name = "DICOM port not answering"
      condition_threshold {
        filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type=\"uptime_url\" AND metric.label.check_id=\"${conditions.value.uptime_check_id}\""
        comparison      = "COMPARISON_GT"
        threshold_value = 1
        duration        = "300s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_NEXT_OLDER"
          cross_series_reducer = "REDUCE_COUNT_FALSE"
          group_by_fields      = ["resource.label.host"]
        }
      }
    }
  }
}
