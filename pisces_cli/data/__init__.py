"""Data files shipped with pisces (prompt suites under :mod:`pisces_cli.data.prompts`)."""
