"""The ``neocloud`` command line (Typer + Rich); it talks to the control plane through the
SDK and never imports the server."""
