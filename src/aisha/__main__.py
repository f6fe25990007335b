from aisha.cli import app

app(prog_name="aisha")
