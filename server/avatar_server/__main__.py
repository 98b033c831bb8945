"""`python -m avatar_server` runs the server."""

from avatar_server.cli import main

main()
