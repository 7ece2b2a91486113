"""Report tables and plots built from MLflow runs (see the reports issue)."""
