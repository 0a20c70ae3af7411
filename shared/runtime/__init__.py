"""Runtimes: ``local`` wires the stages to disk, SQLite and a local queue in one
process; ``gcp`` builds the Google adapters for the Cloud Functions."""
