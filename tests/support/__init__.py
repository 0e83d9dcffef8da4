"""Shared test infrastructure: a real Mosquitto broker, a test PKI and a recorder of published messages."""
