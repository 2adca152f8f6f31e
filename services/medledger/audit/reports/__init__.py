"""Compliance reports over the audit log: selection rules, CSV/JSON/PDF renderings, and the
offline verification of JSON reports."""
