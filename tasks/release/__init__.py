"""The release runbook's steps (``flows/release.py`` declares them).

- ``window``: when a region may take a release (venues' sessions, freezes, the clock);
- ``target``: which release a run is (app, version, hosts, batches, key);
- ``checks``: pre-release checks per kind of app (a registry others add to);
- ``layout``: the commands that read and change releases side by side on a host;
- ``records``: what the ledger keeps (each host's way back, the manifest);
- ``steps``: the steps themselves, each beside its plan.
"""
