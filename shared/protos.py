"""Conversions between shiftrec.v1 messages and domain records, used by servers and clients."""

from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from shared.store import EventRecord, ItemRecord
from shiftrec.v1 import common_pb2


def timestamp_us(ts: Timestamp) -> int:
    """Microseconds since the epoch, exact integer arithmetic (no float rounding)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


def timestamp_from_us(us: int) -> Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1_000)


def item_from_proto(item: common_pb2.Item) -> ItemRecord:
    return ItemRecord(
        item.item_id, item.title, item.category, tuple(item.tags), item.brand, item.price
    )


def item_to_proto(item: ItemRecord) -> common_pb2.Item:
    return common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        category=item.category,
        tags=item.tags,
        brand=item.brand,
        price=item.price,
    )


def event_to_proto(event: EventRecord) -> common_pb2.Event:
    message = common_pb2.Event(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        type=cast(common_pb2.EventType, event.event_type),
        occurred_at=timestamp_from_us(event.occurred_at_us),
        platform=event.platform,
    )
    if event.value is not None:
        message.value = event.value
    return message
