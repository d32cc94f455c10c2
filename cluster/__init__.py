"""tumorforge: cluster stage."""
