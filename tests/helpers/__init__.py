"""Test-only helpers: deterministic weight-fill rules of the conformance kit and small fixtures."""
