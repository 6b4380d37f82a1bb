//! chiron's egress: sealed per-principal secrets ([`secrets`], [`keys`]) and the proxy on every
//! runner's listener that decides, per request, whether the host may be reached and which
//! secrets the sending tool's package gets there, injects them, scrubs them from what comes
//! back, and audits the request ([`proxy`]).

pub mod ca;
pub mod keys;
pub mod proxy;
pub mod scrub;
pub mod secrets;
#[cfg(feature = "testing")]
pub mod testing;

pub use keys::{KeyError, Keyring, MasterKey};
pub use proxy::{EgressProxy, EgressSettings};
pub use secrets::{SecretError, Secrets};
