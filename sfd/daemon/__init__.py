"""The loops, the HTTP server and the command line."""
