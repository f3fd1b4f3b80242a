"""The benchmark harness: suites, sweeps, timing, metrics, records, tables, plots and the `scorebench` CLI."""
