//! sluice's connectors: sources, transforms and sinks, one file each behind the engine's traits, the explicit
//! [`mod@registry`], and the synthetic log profiles used by the generator source and `sluice gen`.

pub mod api;
pub mod aws_credentials;
pub mod aws_endpoint;
pub mod aws_error;
pub mod aws_profile;
pub mod kms;
pub mod load;
pub mod measure;
pub mod record_data;
pub mod registry;
pub mod sinks;
pub mod sources;
pub mod synth;
pub mod tls;
pub mod transforms;

pub use registry::registry;
