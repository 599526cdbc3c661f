"""The ``pisces`` command line. Only light modules are imported here: stages load lazily."""
