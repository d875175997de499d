"""The service the UI and the CLIs use: its interface, local implementation, API client and composition root."""
