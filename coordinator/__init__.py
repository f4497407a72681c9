"""Faultline's coordinator: owns PostgreSQL, runs the actors, serves the faultline.v1 gRPC API."""

__version__ = "0.1.0"
