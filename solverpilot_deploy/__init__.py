"""Render, lint and deploy the SolverPilot job wrapper."""

__version__ = "0.1.0"
