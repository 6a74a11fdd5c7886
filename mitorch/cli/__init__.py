"""Console entry points: thin wrappers that parse, call the API and print."""
