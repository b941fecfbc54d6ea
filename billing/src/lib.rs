//! Billing's edges: Stripe webhooks verified and decoded into commands on the
//! `BillingAccount` aggregate ([`webhook`]), and the Stripe API calls that start a
//! checkout or open the customer portal ([`stripe`]).

pub mod stripe;
pub mod webhook;
