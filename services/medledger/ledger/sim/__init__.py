"""Deterministic simulation of the ledger's consensus core under faults."""

from medledger.ledger.sim.simulator import Outcome, Simulation, SimulationResult, simulate

__all__ = ["Outcome", "Simulation", "SimulationResult", "simulate"]
