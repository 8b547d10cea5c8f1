"""Connectors: one seam per external system (SSH, HTTP, FIX, SQL, Slack, exchange calendars)."""
