"""The per-job record: one dataclass, one atomic writer."""
