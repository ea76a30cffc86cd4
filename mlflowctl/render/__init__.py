"""Pure builders of rich renderables and JSON payloads from plain data."""
