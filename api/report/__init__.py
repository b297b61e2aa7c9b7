"""The evidence report of one audit record: a self-contained, printable HTML page (api/report/render.py)."""
