"""DICOMweb (PS3.18) pieces shared by the inputs and the destinations."""
