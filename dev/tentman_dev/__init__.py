"""Developer tooling of the TentMan billing bundle, never shipped nor imported in production:
embedded PostgreSQL and Valkey, local Airflow stacks (`make up`), the demo (`make demo`) and the
benchmarks. Its own distribution (dev/pyproject.toml), installed only in the development venv.
"""
