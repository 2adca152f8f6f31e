"""medledger: consent, access audit and a shared BFT ledger for hospital consortia."""
