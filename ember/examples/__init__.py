"""The seeds' applications as reusable code with a command line."""
