//! Request side of a job: batched inserts, look-ups, the outbox scan.
