"""Integration tier: tests against a real control plane (hack/test-cluster)."""
