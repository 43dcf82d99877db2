"""Security identities: one number per distinct set of security-relevant labels (Cilium's model)."""
