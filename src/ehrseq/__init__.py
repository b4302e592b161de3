"""EHR sequence models on Synthea cohorts, as a DVC pipeline."""
__version__ = "0.1.0"
