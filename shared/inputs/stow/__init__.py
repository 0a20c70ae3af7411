"""STOW-RS input: the Store Instances transaction of PS3.18 section 10.5."""
