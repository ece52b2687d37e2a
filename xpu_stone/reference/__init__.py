"""Independent torch references: the test oracles (evaluate them in float64)."""
