"""Test helpers shared by every suite: waiting on conditions, processes, databases."""
