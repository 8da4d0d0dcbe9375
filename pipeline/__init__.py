"""The staged pipeline: configs, stages, caching, gates, the CLI and the report."""
