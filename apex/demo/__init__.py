"""The demo: support-ticket triage with real, deterministic agents (no network)."""
