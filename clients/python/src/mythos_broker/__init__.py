"""mythos-broker for game servers: publish events to players over HTTP (sync and
async), consume player commands from the Redis command streams, mint tokens, and
test against the real broker (``mythos_broker.testing`` and the pytest plugin)."""

from ._core import (
    Delivery,
    Player,
    Players,
    PublishResult,
    RetryPolicy,
    Room,
    RoomChange,
    Target,
    TokenResponse,
    new_publish_id,
)
from .client import AsyncBrokerClient, BrokerClient
from .commands import (
    AsyncCommandConsumer,
    Command,
    CommandConsumer,
    DeadLetter,
    ResendFilter,
    dead_letter_stream,
    partition_name,
    partition_names,
    partition_of,
)
from .errors import (
    BadRequest,
    BrokerError,
    Forbidden,
    MythosError,
    NotReplicated,
    RateLimited,
    ServerError,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from .tokens import Role, mint_token

__all__ = [
    "AsyncBrokerClient",
    "AsyncCommandConsumer",
    "BadRequest",
    "BrokerClient",
    "BrokerError",
    "Command",
    "CommandConsumer",
    "DeadLetter",
    "Delivery",
    "Forbidden",
    "MythosError",
    "NotReplicated",
    "Player",
    "Players",
    "PublishResult",
    "RateLimited",
    "ResendFilter",
    "RetryPolicy",
    "Role",
    "Room",
    "RoomChange",
    "ServerError",
    "Target",
    "TokenResponse",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "dead_letter_stream",
    "mint_token",
    "new_publish_id",
    "partition_name",
    "partition_names",
    "partition_of",
]
