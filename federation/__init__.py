"""Federated training across domains (Flower, SecAgg+); built in its own issue."""
