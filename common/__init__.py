"""What the three programs share that is not the wire: command-line types and flags,
sizes and rates, the eviction policy, connection caps, the origin policy, URLs as logs
show them, the ranking of supernodes, tokens. Sans-IO: `import common` never imports
trio; only `common.io` does (rate limiters, capped servers, checked connections,
running a server until a signal)."""
