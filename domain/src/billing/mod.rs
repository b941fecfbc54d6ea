//! The billing account of an organization: its plan tier, subscription status and
//! period, Stripe ids, prepaid credits (integer cents), suspension, and workflows used
//! this period.
//!
//! Stripe's webhooks become commands here, each carrying the Stripe event's id and
//! creation time. The account remembers every Stripe event it applied, so a redelivered
//! event — twice or a hundred times, concurrently or not — changes nothing the second
//! time (the command bus serializes commands on one account; the loser of a race reloads
//! and sees the id). Subscription changes also carry Stripe's event time, and one older
//! than the last applied is recorded without effect: a late `customer.subscription.updated`
//! does not roll the account back.
//!
//! The account's id is its organization's id: one account per organization.

mod aggregate;
mod commands;
mod error;
mod events;
mod plans;

pub use aggregate::{BillingAccount, OpenWorkflow, SubscriptionStatus, Tier};
pub use commands::{BillingCommand, StripeChange};
pub use error::BillingError;
pub use events::{BillingEvent, Effect};
pub use plans::{Plan, Plans, PlansError};
