"""Testing tools for filter authors: wire builders, harnesses, checker, strategies."""
