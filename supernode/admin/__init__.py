"""The supernode's admin HTTP API (hypercorn on trio): health, metrics, tasks, peers."""
