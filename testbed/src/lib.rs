//! Test-bed support code (not product code): the bed's cluster DNS server.
//!
//! Debian has no CoreDNS, so the test bed runs `testbed-dns`: it answers
//! `<svc>.<ns>.svc.<domain>` (the ClusterIP, or the ready endpoint addresses of a
//! headless Service), `<hostname>.<svc>.<ns>.svc.<domain>` and
//! `<a-b-c-d>.<svc>.<ns>.svc.<domain>` for headless endpoints, and
//! `<a-b-c-d>.<ns>.pod.<domain>`, from a kube-rs watch of Services and Endpoints.
//! Other names are forwarded to an upstream server if one is configured, or
//! refused (the bed has no way out of the machine).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod query;
pub mod server;
pub mod tools;
pub mod zone;

pub use server::{run, ServerConfig};
pub use zone::{Zone, ZoneLookup};
