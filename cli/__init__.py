"""The `elasticfl` command line (installed as the `elasticfl_cli` package)."""
