"""Domain-owned stream processors: validate, pseudonymise, route, aggregate, push features."""
