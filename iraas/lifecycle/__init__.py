"""The life of a request, over a queue and a blob store: ids, intake, results (first result
wins, dedup, expiry) with one hook for "this result is final", webhook records, and what the
workers and the controller tell everyone else (heartbeats, the cluster status)."""
