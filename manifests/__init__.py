"""tumorforge: manifests stage."""
