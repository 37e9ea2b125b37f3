"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def _field(label: str, type_: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    # A required field's type has no "null": the declarative form (Airflow 3.2+) then marks it required. Its
    # value starts as "" (not null): the React form shows "This field is required" on a null required field
    # before anything is typed, and on "" only once the admin empties it. The connection reads "" as not set.
    kind: str | list[str] = type_ if required else [type_, "null"]
    if required:
        schema.setdefault("default", "")
    return {"label": label, "description": description, "schema": {"type": kind, **schema}}


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata: connection form, hook, notifier and email backend."""
    from airflow_provider_hve import __version__

    return {
        "package-name": "airflow-provider-hve",
        "name": "Microsoft 365 High Volume Email (HVE)",
        "description": "Send reports and alerts through Microsoft 365 High Volume Email with OAuth 2.0 "
        "(Entra ID tokens, SMTP STARTTLS + SASL XOAUTH2).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Microsoft 365 High Volume Email (HVE)",
                "external-doc-url": "https://learn.microsoft.com/exchange/mail-flow/high-volume-email",
                "tags": ["service"],
            }
        ],
        "operators": [
            {
                "integration-name": "Microsoft 365 High Volume Email (HVE)",
                "python-modules": ["airflow_provider_hve.operators.hve"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Microsoft 365 High Volume Email (HVE)",
                "python-modules": ["airflow_provider_hve.hooks.hve"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_hve.hooks.hve.HveHook",
                "hook-name": "Microsoft 365 High Volume Email",
                "connection-type": "hve",
                "conn-fields": {
                    "tenant_id": _field(
                        "Tenant ID",
                        "string",
                        "Directory (tenant) ID, or the tenant's primary domain (contoso.onmicrosoft.com).",
                        required=True,
                        minLength=1,
                    ),
                    "client_id": _field(
                        "Client ID",
                        "string",
                        "Application (client) ID of the Entra app registration.",
                        required=True,
                        minLength=1,
                    ),
                    "auth_mode": _field(
                        "Auth mode",
                        "string",
                        "client_secret (Password = secret value), certificate, password (delegated: Password "
                        "= the HVE account's password) or workload_identity (AKS federated token).",
                        default="client_secret",
                        enum=["client_secret", "certificate", "password", "workload_identity"],
                    ),
                    "certificate_path": _field(
                        "Certificate path (certificate mode)",
                        "string",
                        "certificate mode: PEM file with the private key and certificate (or a .pfx); "
                        "Password = its passphrase, if any.",
                    ),
                    "certificate_thumbprint": _field(
                        "Certificate thumbprint (certificate mode)",
                        "string",
                        "certificate mode, optional: SHA-1 thumbprint shown in Entra (else derived from the "
                        "certificate).",
                    ),
                    "send_certificate_chain": _field(
                        "Send certificate chain (certificate mode)",
                        "boolean",
                        "certificate mode: send x5c (subject name/issuer authentication).",
                        default=False,
                    ),
                    "federated_token_file": _field(
                        "Federated token file (workload_identity mode)",
                        "string",
                        "workload_identity mode: path of the federated token (default: $AZURE_FEDERATED_TOKEN_FILE).",
                    ),
                    "authority_host": _field(
                        "Authority host",
                        "string",
                        "Entra host of your cloud: https://login.microsoftonline.us for US Government, "
                        "https://login.chinacloudapi.cn for China. Other hosts need 'Allow custom authority'.",
                        default="https://login.microsoftonline.com",
                        format="url",
                    ),
                    "allow_custom_authority": _field(
                        "Allow custom authority",
                        "boolean",
                        "Send the credential to an authority host that is not Microsoft's (the sandbox, a "
                        "corporate proxy). Off: only Microsoft Entra hosts are accepted.",
                        default=False,
                    ),
                    "scope": _field(
                        "Scope",
                        "string",
                        "Token scope (Exchange Online).",
                        default="https://outlook.office365.com/.default",
                    ),
                    "ca_bundle": _field(
                        "Extra CA bundle",
                        "string",
                        "Optional PEM file of extra CA certificates trusted for Entra and SMTP (TLS proxies, "
                        "the sandbox).",
                    ),
                    "from_email": _field(
                        "From",
                        "string",
                        "Default From header, may carry a display name: Reports <hve@contoso.com>.",
                    ),
                    "timeout": _field("Timeout (s)", "number", "Network timeout in seconds.", default=30, minimum=1),
                    "send_retries": _field(
                        "Send retries",
                        "integer",
                        "Times one message is sent again after a temporary failure (4xx, connection lost before "
                        "hand-over), within a minute; 0 turns retries off.",
                        default=3,
                        minimum=0,
                        maximum=10,
                    ),
                    "bdat_window": _field(
                        "BDAT window",
                        "integer",
                        "The most messages written and not yet answered when the server offers CHUNKING; bigger "
                        "is faster over a long link, but more outcomes are unknown if the connection breaks. 1: one "
                        "at a time.",
                        default=24,
                        minimum=1,
                        maximum=256,
                    ),
                    "accepted_domains": _field(
                        "Accepted domains",
                        "string",
                        "The tenant's accepted domains, comma-separated (contoso.com, fabrikam.com). Recipients "
                        "outside them are refused before anything is sent: HVE delivers only to accepted domains.",
                    ),
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "extra"],
                    "relabeling": {
                        "host": "SMTP host",
                        "login": "HVE account",
                        "password": "Client secret / password",
                    },
                    "placeholders": {
                        "host": "smtp.hve.mx.microsoft",
                        "port": "587",
                        "login": "reports@contoso.com",
                        "password": "client secret value (not its ID)",
                    },
                },
            }
        ],
        "notifications": ["airflow_provider_hve.notifications.hve.HveNotifier"],
        "email-backends": ["airflow_provider_hve.utils.email.send_email"],
        # Every [hve] option the code reads (conf.get*("hve", ...)); `airflow config list` shows them, and a test
        # keeps this list and the code in step.
        "config": {
            "hve": {
                "description": "Microsoft 365 High Volume Email provider (airflow-provider-hve).",
                "options": {
                    "max_recipients_per_message": {
                        "description": "Most recipients (To + Cc + Bcc) one send may name; more is refused before "
                        "anything is sent. HVE itself takes few recipients per message: to write to many people, "
                        "use HveMailMergeOperator (one message per recipient).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "50",
                        "default": "3000",
                    },
                    "price_per_million_recipients": {
                        "description": "HVE's price in USD per million delivered recipients, for the estimated "
                        "cost a mail merge logs before sending and reports in its summary (estimated_cost_usd).",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "42",
                        "default": "42",
                    },
                    "alert_dir": {
                        "description": "Directory of the alerts' durable state, shared by the alert outbox "
                        "(<alert_dir>/outbox: alerts HVE could not take yet) and the alert listener. With more than "
                        "one machine sending mail (workers, triggerer, scheduler), put it on a volume all of them "
                        "mount, run them as the same user. Created with mode 0700.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/mnt/airflow-shared/hve_alerts",
                        "default": "{AIRFLOW_HOME}/hve_alerts",
                    },
                    "alert_outbox_max": {
                        "description": "Most alerts the outbox keeps. Beyond it the oldest is dropped, with an "
                        "ERROR line naming it.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "1000",
                        "default": "1000",
                    },
                    "alert_outbox_claim_timeout": {
                        "description": "Seconds after which an alert a flusher claimed and did not finish (the "
                        "process died) is sent again, with the same Message-ID, as a possible duplicate.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "600",
                        "default": "600",
                    },
                    "alert_to": {
                        "description": "Recipients of the deployment-wide failure alerts (comma-separated). Empty: the"
                        " alert listener is off.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "data-oncall@contoso.com",
                        "default": "",
                    },
                    "alert_conn_id": {
                        "description": "The hve connection the alert listener sends through.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "hve_default",
                        "default": "hve_default",
                    },
                    "alert_dags_include": {
                        "description": "fnmatch patterns of the DAG ids the listener alerts on (comma-separated); "
                        "empty: every DAG.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "etl_*, billing_*",
                        "default": "",
                    },
                    "alert_dags_exclude": {
                        "description": "fnmatch patterns of DAG ids never alerted on (comma-separated); wins over "
                        "alert_dags_include.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "*_sandbox",
                        "default": "",
                    },
                    "alert_route_to_task_email": {
                        "description": "Send a task's alert to the task's own email (else to an owner that is an "
                        "address) instead of alert_to.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "alert_on_retry": {
                        "description": "Also alert on a try that will be retried; by default only the final try "
                        "alerts.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "alert_on_dag_run": {
                        "description": "Alert when a DAG run fails, besides its failed tasks.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "alert_digest_threshold": {
                        "description": "When more than this many alerts arrive within alert_digest_window_minutes, the"
                        " further ones are collected into one digest mail; 0: never.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "3",
                        "default": "3",
                    },
                    "alert_digest_window_minutes": {
                        "description": "The window of alert_digest_threshold, and how long a digest collects before it"
                        " is sent.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "5",
                        "default": "5",
                    },
                    "alert_recovered": {
                        "description": "Mail when a task that alerted succeeds again, as a reply to its first alert.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                },
            },
        },
    }
