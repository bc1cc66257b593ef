"""Test and benchmark machinery, never shipped in the wheel: a fault-injecting HTTP
origin (`origin`), misbehaving peers (`peers`), the real registry parts and an OCI
image writer (`registry`), a scripted hostile upstream (`scripted`), and a network lab
of namespaces with shaped, delayed, lossy links (`netlab`, root only). The tests,
the benchmarks and `make demo` use it; nothing in the product imports it (an
import-linter contract checks that)."""
