"""Small numpy tasks used by the tests and benchmarks (importable on every Ray worker)."""
