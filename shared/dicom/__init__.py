"""DICOM helpers: tag addresses, header reads and writes that keep pixel data as bytes."""
