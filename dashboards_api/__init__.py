"""FastAPI service that releases only differentially-private aggregates."""
