"""The whole system on one machine: `medledger up` (embedded NATS, a four-validator consortium,
two hospitals' services, each its own process) and the guided `medledger demo`."""
