//! Manifests: files on disk -> YAML documents with positions -> typed model.

pub mod load;
pub mod model;
pub mod yaml;
