"""The plantsync cloud service."""
