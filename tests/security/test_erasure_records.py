"""An erasure is remembered without remembering who: the erasures table holds a digest of the
user id, and the erasure still refuses the shopper's old events."""

from sqlalchemy import text

from shared.store import EventRecord, open_store


def test_the_erasures_table_keeps_no_user_id(database_url: str) -> None:
    store = open_store(database_url)
    user = "alice@example.com"
    store.insert_events([EventRecord("e-1", user, "item-1", 1, 1_000, "web")], received_at_us=2_000)
    assert store.delete_user(user, erased_at_us=3_000) == 1
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM erasures")).all()
    assert len(rows) == 1 and all(user not in str(value) for value in rows[0])
    assert store.insert_events([EventRecord("e-1", user, "item-1", 1, 1_000, "web")], received_at_us=4_000).erased == {"e-1"}
    store.engine.dispose()
