//! carrier: gefyra's TCP reverse proxy.
//!
//! Two modes share one relay core ([`proxy`], zero-copy splice with a
//! buffered fallback): `carrier forward` ([`forward`]), a standalone port
//! forwarder, and in-Pod mode ([`pod`]), where carrier replaces a bridged
//! container, receives its port map from stowaway on the control port and
//! forwards each connection to stowaway's route ports. [`cli`] decides the
//! mode from the process id and the name carrier was invoked under.
#![forbid(unsafe_code)]

pub mod cli;
pub mod forward;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod serve;
pub mod target;
