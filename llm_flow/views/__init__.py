"""Pure functions from a Run (and a route graph) to what the app and the CLI show."""
