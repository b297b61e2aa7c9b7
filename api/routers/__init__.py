"""HTTP routes, one module per resource (DESIGN §4)."""
