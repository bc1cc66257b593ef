"""The supernode's side of the peer protocol, in the order a connection meets it.

- `server`: the peer port; handshake, then a control or a piece session.
- `control`: one peer's control session: admission, Register, piece tasks, reports.
- `swarm`: admitted peers and their upload addresses; the scheduler's decisions turned
  into piece tasks with tickets, and its piece checks run.
- `piececheck`: the supernode fetching a piece from an uploader to judge an accusation.
"""
