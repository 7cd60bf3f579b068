"""Campaign identity and records: the fingerprint a store is bound to, units and their state
machine, the ledger of events, imported artifacts, and which Ray node is which pod at what price."""
