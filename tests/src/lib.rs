//! Test support: real redis-server processes on free loopback ports.
