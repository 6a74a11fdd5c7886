"""AzureML (Azure ML SDK v2): settings, the code and environment a job runs with, job specs,
and the Key Vault read a job makes at start-up.

Imported only where AzureML is in use (`micontrol --executor azureml`, a job's `mitrain`):
`azure.ai.ml` takes over a second to import, and it is an optional extra (`mitorch[azure]`).
"""
