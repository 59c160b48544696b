"""Domain services: keyword-only functions over a database session; they raise
``neocloud.errors`` and never HTTP exceptions."""
