"""The coordinator's long-lived actors; each owns its state and runs a loop over run_once()."""
