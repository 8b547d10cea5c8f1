"""A simulated trading estate: SSH hosts, apps, feeds, OMS databases and a FIX venue.

Start it with ``python -m openbell.lab.run --estate runbooks/lab.yaml`` (foreground) or
``lab.supervisor.up(path)`` (detached); see ``lab.supervisor`` for the API.
"""
