"""Test and benchmark machinery, never shipped in the wheel: a fault-injecting HTTP
origin (`origin`), misbehaving peers (`peers`), the real registry parts and an OCI
image writer (`registry`), and a scripted hostile upstream (`scripted`). The tests,
the benchmarks and `make demo` use it; nothing in the product imports it (an
import-linter contract checks that)."""
