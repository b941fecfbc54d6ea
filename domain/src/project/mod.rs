//! The project: where tickets, tasks and specs live. Belongs to one organization.

mod aggregate;

pub use aggregate::{
    Project, ProjectCommand, ProjectError, ProjectEvent, ProjectSettings, SettingsChange,
    StallPolicy,
};
