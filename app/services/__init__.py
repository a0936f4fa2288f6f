"""What the routes call: the inspection service, the golden-board store, uploads, and the
state of the running service."""
