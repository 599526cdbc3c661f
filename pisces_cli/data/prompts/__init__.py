"""Prompt-suite data files; read them through :mod:`pisces_cli.evaluation.prompt_suites`."""
