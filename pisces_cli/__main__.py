from pisces_cli.cli.main import run

run()
