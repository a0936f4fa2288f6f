"""Services behind the routes that are not the model: the golden-board store."""
