"""The ground floor: secrets (redaction, credential detection), remote files (Blob Storage, HTTP),
stored container credentials, dataset locations and a training's artifacts.

Every other folder may import this one; it imports none of them (only mitorch.errors, .envvars
and .paths beside it), so files and secrets are handled the same way everywhere.
"""
