"""Adapters behind the ports in shared.ports: local ones (disk, SQLite) and GCP ones
(GCS, Firestore, Pub/Sub). GCP modules import their client libraries lazily."""
