"""Thin Typer front end: commands parse options, call one library function and show the result."""
