"""Operator commands that act on a whole organisation's deployment (`medledger admin`)."""
