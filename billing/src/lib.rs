//! Billing's edges: Stripe webhooks verified and decoded ([`webhook`]) and applied as
//! commands on the `BillingAccount` aggregate, each delivery recorded ([`deliveries`]),
//! and the Stripe API calls that start a checkout or open the customer portal
//! ([`stripe`]).
//!
//! # Layout
//!
//! * [`webhook`] — signature verification and decoding (no I/O).
//! * [`deliveries`] — a verified delivery applied and recorded.
//! * [`stripe`] — checkout and portal sessions over Stripe's API.

pub mod deliveries;
pub mod stripe;
pub mod webhook;
