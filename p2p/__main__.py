"""`python -m p2p` runs the command line."""

from p2p.app.cli import app

if __name__ == "__main__":
    app()
