"""Synthetic data: the demo's runs and market, bulk seeding, and the regime-switching world of the benches."""
