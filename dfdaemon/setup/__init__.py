"""`dfdaemon setup docker|containerd|podman`: write or merge a client's configuration so
that it pulls through this host's daemon, with a backup, idempotently, undoably. One
module per client says what its files should hold (`docker`, `containerd`, `podman`);
`target` is what the daemon serves, `files` the shared backup, diff and write."""
