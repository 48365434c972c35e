"""Developer tooling, never imported in production: embedded PostgreSQL, local stacks, demo, benchmarks."""
