//! Worker side of a job: claims, leases, final statuses, retention.
