"""The ``pcipass`` command line and the HTTP client it shares with the agent."""
