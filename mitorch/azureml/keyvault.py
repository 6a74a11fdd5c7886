"""The database URI of an AzureML job, read from the workspace's Key Vault at start-up.

The job spec names the vault (MITORCH_KEY_VAULT_URL) and the secret (MITORCH_DB_SECRET_NAME); the
value is read through the compute's managed identity, whose client id AzureML puts in
DEFAULT_IDENTITY_CLIENT_ID. The compute's identity needs the "Key Vault Secrets User" role on the
vault (and "Storage Blob Data Contributor" on the artifacts' storage account).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mitorch.errors import ConfigError


def wanted() -> bool:
    """Whether this process is an AzureML job that reads its database URI from Key Vault."""
    return bool(os.environ.get("MITORCH_KEY_VAULT_URL", "").strip())


def _secret_client(vault_url: str, credential: Any) -> Any:
    from azure.keyvault.secrets import SecretClient

    return SecretClient(vault_url=vault_url, credential=credential)


def db_uri(secret_client: Callable[[str, Any], Any] = _secret_client) -> str:
    """The database URI kept in the Key Vault secret the job names.

    Also points azure-identity's DefaultAzureCredential (used for Blob artifacts and datasets)
    at the compute's identity.

    Raises:
        ConfigError: the secret cannot be read; the message names the vault and the secret,
            never a value.
    """
    vault_url = os.environ["MITORCH_KEY_VAULT_URL"].strip()
    name = os.environ.get("MITORCH_DB_SECRET_NAME", "").strip() or "mitorch-db-uri"
    identity = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID", "").strip()
    if identity and not os.environ.get("AZURE_CLIENT_ID"):
        os.environ["AZURE_CLIENT_ID"] = identity  # read by DefaultAzureCredential's managed identity
    try:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=identity or None)
        value = secret_client(vault_url, credential).get_secret(name).value
    except ImportError as e:
        raise ConfigError(f"reading secret {name} from {vault_url} needs azure-identity and azure-keyvault-secrets "
                          f"(pip install mitorch[azure]): {e}") from None
    except Exception as e:  # noqa: BLE001 - the SDKs raise many kinds; none may carry the value
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(f"cannot read secret {name} from Key Vault {vault_url} ({type(e).__name__}: {reason}); "
                          "the compute's identity needs the Key Vault Secrets User role on it") from None
    if not value:
        raise ConfigError(f"secret {name} in Key Vault {vault_url} is empty; it must hold MITORCH_DB_URI")
    return value
