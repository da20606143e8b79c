//! Integration tests: the server started on loopback ports and driven by real clients.
