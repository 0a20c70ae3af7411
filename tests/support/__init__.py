"""Helpers shared by tests and benchmarks: synthetic DICOM, real peer processes."""
