"""Test support: real servers and deterministic fixtures that tests and benchmarks build on.

- `tests.support.oci`: write OCI image layouts deterministically; `DirFiles`, a `FileSource` over
  a directory.
- `tests.support.registry`: start the real CNCF distribution registry on loopback, push with
  skopeo, and `ScriptedServer`, a loopback HTTP server with scripted answers for faults and auth.
- `tests.support.repos`, `tests.support.cli`: Git repositories and the `stella` command.

`bench/` scripts put the project root on `sys.path` to import these.
"""
