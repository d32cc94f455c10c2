"""tumorforge: evaluation stage."""
