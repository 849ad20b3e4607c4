"""Public data sets for the benchmarks, split into domains by a natural attribute."""
