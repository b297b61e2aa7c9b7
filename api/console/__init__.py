"""The compliance console: a static single-page app served at /console by the API process (api/console/routes.py)."""
