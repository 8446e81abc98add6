"""HTML reports (jinja2 + matplotlib)."""
