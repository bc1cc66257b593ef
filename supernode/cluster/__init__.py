"""Supernodes as a cluster: membership kept in Redis (`supernode --cluster`)."""
