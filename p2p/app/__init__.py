"""Application: the command line, console progress, the demo world."""
