//! Tool packages. A package is a folder holding `chiron-tool.toml`: its name, version, kind
//! (`command` or `mcp-stdio`), the argv that starts it, optional non-secret environment, an
//! optional installable `source`, the tools it declares (command kind), and its `[egress]`
//! section — the hosts it may reach and, per host, which named secrets are injected and how.
//! That section is the only place injection is ever defined.
//!
//! [`manifest::load_manifest`] parses and validates one manifest, reporting errors with file,
//! line and field ([`ManifestError`]); [`catalog::load_packages`] loads every package under the
//! configured directories, skipping broken ones and reporting tool-name collisions.

pub mod catalog;
pub mod manifest;

pub use catalog::{load_packages, LoadReport, ToolEntry};
pub use manifest::{
    load_manifest, standard_port, EgressHost, Injection, ManifestError, PackageKind,
    SecretInjection, ToolDecl, ToolPackage, MANIFEST_FILE,
};
