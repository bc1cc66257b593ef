"""The CDN: fetch a task from its origin once, cut it into sealed pieces, store them."""
