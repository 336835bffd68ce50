"""Creating the embedded grid's AWS resources, with the names and keys of a real deployment.

:func:`provision` makes, through the local AWS endpoint, what HTC-Grid's Terraform makes on
AWS: the data-plane bucket, the task queue and its dead-letter queue, the state table with its
two indexes, and a Cognito user pool with one app client and one user. It returns the
``agent_config.json`` content that a deployment's ``terraform output agent_config`` would,
plus the embedded grid's own keys.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from .. import aws, protocol
from ..auth import redact_botocore_logs
from ..config import AUTH_PASSWORD, STORAGE_S3
from .settings import KEY_DLQ, KEY_ENDPOINTS, KEY_QUEUE, KEY_STATE_TABLE, GridSettings

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
#: The static credentials moto accepts; the embedded grid hands them to its clients.
LOCAL_CREDENTIAL = "testing"
USERNAME = "htcgrid-user"

# A real deployment's resource names, each followed by the deployment's tag.
BUCKET_PREFIX = "htc-stdout-bucket-"
QUEUE_PREFIX = "htc_task_queue-"
DLQ_PREFIX = "htc_task_queue_dlq-"
STATE_TABLE_PREFIX = "htc_tasks_state_table-"

#: Receives of one message before SQS moves it to the dead-letter queue. The state table
#: counts attempts and decides retries; this bound only catches a message that no agent can
#: ever claim, so it sits far above any sensible retry count.
MAX_RECEIVE_COUNT = 100


@dataclass(frozen=True)
class Provisioned:
    """What :func:`provision` made: the configuration and the one user's credentials."""

    config: dict[str, Any] = field(repr=False)
    username: str
    password: str = field(repr=False)


def new_tag() -> str:
    """Return a fresh deployment tag: 8 lowercase hex digits, valid in every resource name."""
    return secrets.token_hex(4)


def _new_password() -> str:
    # Cognito's default policy wants upper and lower case letters, a digit and a symbol.
    alphabet = string.ascii_letters + string.digits
    body = "".join(secrets.choice(alphabet) for _ in range(24))
    return body + secrets.choice(string.ascii_uppercase) + secrets.choice("0123456789") + "!a"


_SERVICES = ("s3", "sqs", "dynamodb", "cognito-idp")


def preload_models(session: boto3.session.Session, region: str = DEFAULT_REGION) -> None:
    """Load the four services' API models into ``session``, before the endpoint is known.

    Loading the models is most of the cost of making a client; done while the AWS services
    start, it takes nothing off the time :func:`provision` then needs.
    """
    for service in _SERVICES:
        # Making a client sends no request; port 9 (discard) is never contacted.
        _client(session, service, "http://127.0.0.1:9", region)


def _client(session: boto3.session.Session, service: str, endpoint: str, region: str) -> Any:
    return session.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=LOCAL_CREDENTIAL,
        aws_secret_access_key=LOCAL_CREDENTIAL,
        config=Config(
            connect_timeout=aws.CONNECT_TIMEOUT_SEC,
            read_timeout=aws.READ_TIMEOUT_SEC,
            retries={"max_attempts": aws.MAX_ATTEMPTS, "mode": "standard"},
        ),
    )


def _make_bucket(s3: Any, region: str, bucket: str) -> None:
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def _make_queues(sqs: Any, queue: str, dlq: str, visibility: int) -> None:
    dlq_url = sqs.create_queue(QueueName=dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
    sqs.create_queue(
        QueueName=queue,
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(redrive),
        },
    )


def _make_state_table(db: Any, table: str) -> None:
    db.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": protocol.TASK_ID, "AttributeType": "S"},
            {"AttributeName": protocol.SESSION_ID, "AttributeType": "S"},
            {"AttributeName": protocol.TASK_STATUS, "AttributeType": "S"},
            {"AttributeName": protocol.HEARTBEAT_EXPIRATION_TIMESTAMP, "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": protocol.TASK_ID, "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": protocol.SESSION_INDEX,
                "KeySchema": [
                    {"AttributeName": protocol.SESSION_ID, "KeyType": "HASH"},
                    {"AttributeName": protocol.TASK_STATUS, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": protocol.TTL_INDEX,
                "KeySchema": [
                    {"AttributeName": protocol.TASK_STATUS, "KeyType": "HASH"},
                    {
                        "AttributeName": protocol.HEARTBEAT_EXPIRATION_TIMESTAMP,
                        "KeyType": "RANGE",
                    },
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
    )


def _make_user_pool(cognito: Any, tag: str, password: str) -> tuple[str, str]:
    pool_id = cognito.create_user_pool(PoolName=f"htc_pool-{tag}")["UserPool"]["Id"]
    client_id = cognito.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName=f"htc_client-{tag}",
        GenerateSecret=False,
        ExplicitAuthFlows=[
            "ALLOW_USER_SRP_AUTH",
            "ALLOW_USER_PASSWORD_AUTH",
            "ALLOW_REFRESH_TOKEN_AUTH",
        ],
    )["UserPoolClient"]["ClientId"]
    cognito.admin_create_user(UserPoolId=pool_id, Username=USERNAME, MessageAction="SUPPRESS")
    cognito.admin_set_user_password(
        UserPoolId=pool_id, Username=USERNAME, Password=password, Permanent=True
    )
    return pool_id, client_id


def provision(
    endpoint: str | Mapping[str, str],
    tag: str,
    *,
    settings: GridSettings | None = None,
    region: str = DEFAULT_REGION,
    results_pull_interval_sec: float = 1.0,
    session: boto3.session.Session | None = None,
) -> Provisioned:
    """Create the grid's resources at ``endpoint`` and return its configuration.

    The four groups of resources (bucket, queues, state table, user pool) are created
    concurrently. The API urls are left empty: the gateway that serves them starts later,
    and the caller fills them in.

    Parameters
    ----------
    endpoint : str or mapping
        The local AWS endpoint, e.g. ``http://127.0.0.1:5000``, or one per boto3 service name
        (``s3``, ``sqs``, ``dynamodb``, ``cognito-idp``).
    tag : str
        Suffix of every resource name, as a deployment's tag (see :func:`new_tag`).
    settings : GridSettings, optional
        Timings of the agents, checker and gateway; the defaults otherwise.
    region : str
        The region the resources claim to live in.
    results_pull_interval_sec : float
        How often clients should poll /result.
    session : boto3.session.Session, optional
        The session to make clients from, e.g. one given to :func:`preload_models`.

    Returns
    -------
    Provisioned
        ``config`` has every key of a real ``agent_config.json`` plus the embedded grid's own;
        ``username`` and ``password`` sign in to the user pool and appear nowhere in it.

    Examples
    --------
    >>> grid = provision("http://127.0.0.1:5000", new_tag())  # doctest: +SKIP
    >>> grid.config["ddb_state_table"]  # doctest: +SKIP
    'htc_tasks_state_table-1a2b3c4d'
    """
    settings = settings or GridSettings()
    bucket = BUCKET_PREFIX + tag
    queue = QUEUE_PREFIX + tag
    dlq = DLQ_PREFIX + tag
    table = STATE_TABLE_PREFIX + tag
    password = _new_password()
    # Clients are made here, one after the other: a session is not safe to share between
    # threads, the clients it makes are.
    session = session or boto3.session.Session()
    endpoints = (
        {service: endpoint for service in _SERVICES}
        if isinstance(endpoint, str)
        else {service: endpoint[service] for service in _SERVICES}
    )
    s3, sqs, db, cognito = (_client(session, s, endpoints[s], region) for s in _SERVICES)

    # The password travels in a request body, which botocore logs at DEBUG.
    redact_botocore_logs()
    with ThreadPoolExecutor(4, thread_name_prefix="htcgrid-provision") as pool:
        # The user pool first: moto takes longest over it.
        made_pool = pool.submit(_make_user_pool, cognito, tag, password)
        made_bucket = pool.submit(_make_bucket, s3, region, bucket)
        made_queues = pool.submit(_make_queues, sqs, queue, dlq, settings.visibility_timeout_sec)
        made_table = pool.submit(_make_state_table, db, table)
        made_bucket.result()
        made_queues.result()
        made_table.result()
        pool_id, client_id = made_pool.result()

    config: dict[str, Any] = {
        "region": region,
        "grid_storage_service": STORAGE_S3,
        "s3_bucket": bucket,
        "s3_kms_key_id": "",
        "redis_url": "",
        "redis_password": "",
        "public_api_gateway_url": "",
        "private_api_gateway_url": "",
        "api_gateway_key": secrets.token_urlsafe(30),
        "user_pool_id": pool_id,
        "cognito_userpool_client_id": client_id,
        "dynamodb_results_pull_interval_sec": results_pull_interval_sec,
        "task_input_passed_via_external_storage": 1,
        KEY_STATE_TABLE: table,
        KEY_QUEUE: queue,
        KEY_DLQ: dlq,
        "sqs_endpoint": endpoints["sqs"],
        **settings.to_config(),
        "aws_endpoint_url": endpoints["sqs"],
        KEY_ENDPOINTS: endpoints,
        "local_aws_access_key_id": LOCAL_CREDENTIAL,
        "local_aws_secret_access_key": LOCAL_CREDENTIAL,
        # moto's SRP flow accepts any password; its plain-password flow checks it.
        "local_cognito_auth_flow": AUTH_PASSWORD,
    }
    logger.info("provisioned the embedded grid's resources with tag %s at %s", tag, endpoints)
    return Provisioned(config=config, username=USERNAME, password=password)
