"""Bringing runs in from files, Optuna studies and the API (SPEC section 11)."""
