"""Tables of the event store (SQLAlchemy 2.0 declarative). Timestamps are integer microseconds
since the Unix epoch (UTC): exact, compact and compared the same way on SQLite and PostgreSQL."""

import functools
import hashlib

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

MAX_ID_LENGTH = 128


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """One stored behaviour event. `seq` is the arrival order, used to break timestamp ties."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), unique=True)
    user_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    event_type: Mapped[int] = mapped_column(SmallInteger)
    occurred_at_us: Mapped[int] = mapped_column(BigInteger)
    received_at_us: Mapped[int] = mapped_column(BigInteger)
    platform: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        # Serves "the last N events of user U" as one backward index range scan.
        Index("ix_events_user_time", "user_id", "occurred_at_us", "seq"),
    )


class ItemRow(Base):
    """One catalogue item; `tags` is a JSON list of strings."""

    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    brand: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), default="")
    price: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at_us: Mapped[int] = mapped_column(BigInteger)


@functools.lru_cache(maxsize=65_536)  # every batch asks for the digests of its shoppers
def user_digest(user_id: str) -> str:
    """How an erasure names its user: SHA-256 of the id (hex), never the id itself."""
    return hashlib.sha256(b"shiftrec-erasure\x00" + user_id.encode("utf-8")).hexdigest()


class ErasureRow(Base):
    """A user erased by DeleteUser, by digest (`user_digest`), and when: their events that
    occurred before that moment are refused if they are sent again (a retry in flight, a
    replayed queue, a re-run import)."""

    __tablename__ = "erasures"

    user_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at_us: Mapped[int] = mapped_column(BigInteger)
