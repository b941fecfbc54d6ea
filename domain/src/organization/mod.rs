//! The organization: the tenant that owns projects, agents and (later) a billing account.
//! Organization events carry no project (`Scope::project_id` is `None`).

mod aggregate;

pub use aggregate::{
    Grantor, Organization, OrganizationCommand, OrganizationError, OrganizationEvent,
};
