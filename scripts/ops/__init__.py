"""Verbs against a running cluster: status, stats, monitor (and the shared way they join it)."""
