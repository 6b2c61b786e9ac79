//! stowaway: the in-cluster userspace WireGuard endpoint.
pub mod bridge;
pub mod cluster;
