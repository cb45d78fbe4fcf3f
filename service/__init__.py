"""revhpo: service."""
