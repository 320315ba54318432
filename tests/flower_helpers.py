"""In-process stand-ins for Flower's runtime: a Grid that calls ClientApps directly."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, Metadata, RecordDict

_message_ids = itertools.count(1)


def delivered(message: Message, node_id: int) -> Message:
    """The message as a SuperNode would receive it (with an id)."""
    meta = message.metadata
    metadata = Metadata(
        run_id=meta.run_id,
        message_id=meta.message_id or f"m{next(_message_ids)}",
        src_node_id=meta.src_node_id,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id=meta.group_id,
        created_at=meta.created_at,
        ttl=meta.ttl,
        message_type=meta.message_type,
    )
    return Message(content=message.content, metadata=metadata)


def error_reply(message: Message, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=message)


class InProcessGrid:
    """Routes each message to `handlers[node_id](message, context)` and keeps the replies
    for `pull_messages`, as a grid does.

    Each node keeps its own Context (and so its `state`) across rounds, as a SuperNode
    does. A handler may return None to simulate a node whose reply never arrives.
    """

    def __init__(self, handlers: dict[int, Callable[[Message, Context], Message | None]],
                 node_configs: dict[int, dict] | None = None) -> None:
        self.handlers = handlers
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config=(node_configs or {}).get(node_id, {}),
                state=RecordDict(),
                run_config={},
            )
            for node_id in handlers
        }
        self.sent: list[Message] = []
        self.pending: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; its reply (if any) waits to be pulled."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's grid does
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            reply = self.handlers[node_id](delivered(message, node_id), self.contexts[node_id])
            if reply is not None:
                self.pending.append(reply)
            ids.append(message.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        pulled = [reply for reply in self.pending if reply.metadata.reply_to_message_id in wanted]
        self.pending = [reply for reply in self.pending if reply not in pulled]
        return pulled


def strategy_for(settings, report=None):
    """The ServerApp's strategy for `settings`, as if it had just sent round 1's state."""
    from sfdd_flwr.server_app import server_parts

    strategy, recorder = server_parts(settings, InProcessGrid({}), report or (lambda text: None))
    strategy.sent_state = recorder.method.initial_state()
    return strategy
