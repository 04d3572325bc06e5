"""The params schema (one validated model of params.yaml), its loader and its docs."""
