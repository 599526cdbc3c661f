"""One module per pipeline stage; each exposes ``run_*`` functions the CLI calls lazily."""
