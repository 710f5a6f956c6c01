"""Service layer around the index: SQL metadata (``services.db``) for videos, models, index generations and queries."""
