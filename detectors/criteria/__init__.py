"""One module per phase criterion of docs/clinical-criteria.md; each takes state and thresholds and
returns findings (``detectors.alerts.Evidence``) or None, and never reads a clock."""
