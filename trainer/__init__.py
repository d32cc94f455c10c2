"""tumorforge: trainer stage."""
