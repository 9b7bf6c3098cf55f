"""The durable store-and-forward outbox (SQLite through aiosqlite, WAL).

INTERFACE CONTRACT — implemented by the buffer work; the uplinks and the daemon use only this.

    async with Outbox(path, gateway="gw-1", max_bytes=512 * 2**20) as outbox:
        seqs = await outbox.append(Cycle(records=[...], baselines={("cnc-03", "part_count"): 1234}))
        base = await outbox.baselines()                # {(device, tag): raw}
        rows = await outbox.peek(max_records=1000, max_bytes=1 << 20)          # oldest first
        rows = await outbox.peek(after_seq=rows[-1].seq, max_records=1000)     # next window (MQTT)
        await outbox.ack_through(seq)                  # delete everything <= seq
        st = await outbox.stats()

- ``append`` is one ``BEGIN IMMEDIATE`` transaction for the whole poll cycle: it assigns
  seq (strictly increasing, never reused, also after deleting acked rows and restarts),
  stores the records and the counter baselines together, and returns the seqs. If it raises
  ``BufferWriteError`` (disk full, failed fsync, I/O error) nothing of the cycle is stored.
- ``peek`` never loads more than asked; rows are ``StoredRow(seq, ts, device, kind, body)``
  with ``body`` the stored msgpack bytes (``buffer.records.encode_batch_raw`` sends them as is).
- ``ack_through(seq)`` is idempotent; acking beyond the last stored seq is an error.
"""
