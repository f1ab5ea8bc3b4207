//! Authentication and authorisation from mosquitto-compatible files, sans-io: password files
//! ([`password`]), ACL files ([`acl`]) and the `coremq passwd` tool ([`passwd_cli`]).
pub mod acl;
pub mod passwd_cli;
pub mod password;
pub mod policy;

pub use acl::{AclFile, AclFileError, ClientAcl};
pub use password::{PasswordFile, PasswordFileError, PasswordHash, VerifyCache};
