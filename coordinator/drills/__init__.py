"""Failure drills: scripted faults against a stack each drill starts itself, judged by the checker.

A drill owns everything it runs: a fresh database (or a private Postgres cluster), coordinator
processes, worker processes and producers. Handlers write their side effect to the effects ledger
(ledger.sql), fenced by the lease's token; after the fault, checker.py verifies the invariants of
docs/invariants.md and the drill prints the verdict and its figures. `faultline drill NAME` runs
one (coordinator/cli/drill.py); drills.py holds their scripts.
"""
