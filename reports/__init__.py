"""``bench report``: tables and plots built from the runs MLflow holds (nothing else is read)."""
