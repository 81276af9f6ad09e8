"""The local-stack harness: starts, supervises and probes the services for `tera run`,
the tests and the benchmarks. It imports services; services never import it."""
