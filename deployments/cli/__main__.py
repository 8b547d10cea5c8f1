"""``python -m openbell.deployments.cli``: the same as the ``openbell`` command."""

from openbell.deployments.cli import main

if __name__ == "__main__":
    main()
